"""Per-app resources owned by the lifespan, and the accessors views use to reach them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from flask import Flask, current_app

from clients.calls import bind_upstreams
from clients.session import SessionLimits, guarded_session
from clients.upstreams import Upstreams
from fanout.bridge import BridgeFlask
from fanout.core.config import GatewayConfig
from fanout.jobs.kinds import JobKind
from fanout.jobs.registry import JobLimits, JobRegistry
from fanout.jobs.store_factory import job_store_url, open_store_from_url
from fanout.process.metrics import metrics

SESSION_KEY = "fanout.http_session"
UPSTREAMS_KEY = "fanout.upstreams"
GATEWAY_CONFIG_KEY = "fanout.gateway_config"
JOB_REGISTRY_KEY = "fanout.job_registry"
JOB_KINDS_KEY = "fanout.job_kinds"


class ResourceUnavailable(RuntimeError):
    """A lifespan-owned resource was asked for while the app is not being served."""


async def _http_session(app: Flask) -> AsyncIterator[None]:
    limits = SessionLimits(
        connections=app.config["CONNECTOR_LIMIT"],
        connections_per_host=app.config["CONNECTOR_LIMIT_PER_HOST"],
        dns_cache_seconds=app.config["DNS_CACHE_SECONDS"],
        keepalive_seconds=app.config["KEEPALIVE_SECONDS"],
    )
    config = gateway_config(app)
    # The JWKS URL is fetched over this session too, under the same guard.
    jwks = [config.auth.jwt.jwks_url] if config.auth.jwt and config.auth.jwt.jwks_url else []
    async with guarded_session(config.upstreams.values(), limits, jwks) as session:
        app.extensions[SESSION_KEY] = session
        try:
            yield
        finally:
            app.extensions.pop(SESSION_KEY, None)


async def _upstreams(app: Flask) -> AsyncIterator[None]:
    pool = Upstreams(gateway_config(app).upstreams, http_session(app), observer=metrics(app))
    app.extensions[UPSTREAMS_KEY] = pool
    # The lifespan's own tasks (the job registry's, started next) find them too.
    bind_upstreams(pool)
    try:
        yield
    finally:
        bind_upstreams(None)
        app.extensions.pop(UPSTREAMS_KEY, None)


def _bind_request_upstreams() -> None:
    # clients.upstream(name) knows nothing of Flask: it reads a context
    # variable, set here for the request (and the tasks and jobs it starts).
    bind_upstreams(current_app.extensions.get(UPSTREAMS_KEY))


async def _jobs(app: Flask) -> AsyncIterator[None]:
    config = gateway_config(app).jobs
    store = open_store_from_url(
        job_store_url(app.config["JOB_STORE"], config.store, app.config["CONFIG"])
    )
    await store.open()
    limits = JobLimits(
        max_running=config.max_running,
        max_pending=config.max_pending,
        default_timeout=config.default_timeout,
        result_ttl=config.result_ttl,
        max_result_bytes=config.max_result_bytes,
        lease_seconds=app.config["JOB_LEASE_SECONDS"],
        poll_seconds=app.config["JOB_POLL_SECONDS"],
        sweep_seconds=app.config["JOB_SWEEP_SECONDS"],
    )
    registry = JobRegistry(
        store, limits, observer=metrics(app), worker_id=app.config["WORKER_ID"] or None
    )
    registry.start()
    app.extensions[JOB_REGISTRY_KEY] = registry
    try:
        yield
    finally:
        app.extensions.pop(JOB_REGISTRY_KEY, None)
        try:
            await registry.close(app.config["JOB_GRACE_SECONDS"])
        finally:
            await store.close()


def install_resources(app: BridgeFlask, config: GatewayConfig) -> None:
    """Keep the gateway config; register what the lifespan opens and closes."""
    app.extensions[GATEWAY_CONFIG_KEY] = config
    app.extensions[JOB_KINDS_KEY] = {}
    app.before_request(_bind_request_upstreams)
    app.while_serving(_http_session)
    app.while_serving(_upstreams)
    # Last in, first out: jobs stop (and may still call upstreams) before the session closes.
    app.while_serving(_jobs)


def register_job_kind(app: Flask, kind: JobKind) -> None:
    """Make a job kind startable by POST /jobs/<name>."""
    app.extensions[JOB_KINDS_KEY][kind.name] = kind


def job_kinds(app: Flask | None = None) -> dict[str, JobKind]:
    """The app's job kinds, by name."""
    target = app if app is not None else current_app
    kinds: dict[str, JobKind] = target.extensions[JOB_KINDS_KEY]
    return kinds


def job_registry(app: Flask | None = None) -> JobRegistry:
    """Return the worker's job registry."""
    found = _served(app, JOB_REGISTRY_KEY, "job registry")
    assert isinstance(found, JobRegistry)
    return found


def gateway_config(app: Flask | None = None) -> GatewayConfig:
    """Return the app's validated gateway config."""
    target = app if app is not None else current_app
    config: GatewayConfig = target.extensions[GATEWAY_CONFIG_KEY]
    return config


def _served(app: Flask | None, key: str, what: str) -> object:
    target = app if app is not None else current_app
    found = target.extensions.get(key)
    if found is None:
        raise ResourceUnavailable(
            f"no {what}: it is opened by the ASGI lifespan, so the app must be "
            "served through bridge.ASGIBridge (e.g. hypercorn app:app)"
        )
    return found


def http_session(app: Flask | None = None) -> aiohttp.ClientSession:
    """Return the process's shared ClientSession (the current app's by default)."""
    session = _served(app, SESSION_KEY, "HTTP session")
    assert isinstance(session, aiohttp.ClientSession)
    if session.closed:
        raise ResourceUnavailable("the HTTP session is closed (the app is shutting down)")
    return session


def upstreams(app: Flask | None = None) -> Upstreams:
    """Return the clients of the configured upstreams."""
    found = _served(app, UPSTREAMS_KEY, "upstream clients")
    assert isinstance(found, Upstreams)
    return found
