"""Upstream HTTP calls with aiohttp; knows nothing of Flask.

The public surface, for views, jobs and helpers::

    from clients import upstream, gather, deadline

    reply = await upstream("users").get("/users/7", timeout=2.5)
    user = reply.raise_for_status().json()
    results = await gather({"user": upstream("users").get("/users/7"),
                            "orders": upstream("orders").get("/orders?user=7")})
"""

from clients.calls import (
    CURRENT_UPSTREAMS,
    UnknownUpstream,
    Upstream,
    UpstreamsNotSet,
    bind_upstreams,
    current_upstreams,
    http_session,
    open_upstreams,
    upstream,
    using_upstreams,
)
from clients.errors import (
    BadUpstreamPayload,
    BlockedDestination,
    CircuitOpen,
    UploadStalled,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from clients.gather import gather
from clients.upstream import UpstreamReply
from fanout.core.deadline import deadline, remaining

__all__ = [
    "CURRENT_UPSTREAMS",
    "BadUpstreamPayload",
    "BlockedDestination",
    "CircuitOpen",
    "UnknownUpstream",
    "UploadStalled",
    "Upstream",
    "UpstreamError",
    "UpstreamReply",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "UpstreamsNotSet",
    "bind_upstreams",
    "current_upstreams",
    "deadline",
    "gather",
    "http_session",
    "open_upstreams",
    "remaining",
    "upstream",
    "using_upstreams",
]
