"""Serve Flask over ASGI on one long-lived event loop, through greenlets.

Knows nothing of the gateway: it would serve any Flask app. See
``bridge.flask_app.BridgeFlask`` and ``bridge.asgi.ASGIBridge``.
"""

from fanout.bridge.asgi import ASGIBridge
from fanout.bridge.flask_app import (
    BridgeFlask,
    call_when_exchange_ends,
    iterate_async,
    limit_send_idle,
    request_body_chunks,
    request_body_over_limit,
    request_received_at,
)
from fanout.bridge.greenlets import MissingBridgeError, await_only, in_bridge_greenlet
from fanout.bridge.serving import is_ready, serving_state

__all__ = [
    "ASGIBridge",
    "BridgeFlask",
    "MissingBridgeError",
    "await_only",
    "call_when_exchange_ends",
    "in_bridge_greenlet",
    "is_ready",
    "iterate_async",
    "limit_send_idle",
    "request_body_chunks",
    "request_body_over_limit",
    "request_received_at",
    "serving_state",
]
