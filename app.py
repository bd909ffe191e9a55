"""The Fanout app: ``create_app()`` (the Flask factory) and ``app`` (what Hypercorn serves)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from fanout.bridge import ASGIBridge, BridgeFlask
from fanout.bridge.gc_tuning import tuned_gc
from fanout.bridge.h2c import refuse_h2c_upgrades
from fanout.core.config import GatewayConfig, load_gateway_config
from fanout.process.app_code import import_app_code
from fanout.process.logs import set_level
from fanout.process.metrics import install_metrics
from fanout.process.settings import config_path, load_settings
from handlers import health, jobs, jobs_ui, openapi, ops, proxy
from handlers.aggregate import endpoint_names, register_endpoints
from handlers.auth import install_auth
from handlers.batch import shipped_kinds
from handlers.cors import install_cors
from handlers.errors import install_error_handlers
from handlers.rate_limits import install_rate_limits
from handlers.registration import check_route_clashes, register_app_code
from handlers.request_ids import install_request_ids
from handlers.resources import http_session, install_resources, register_job_kind


def _server_settings(gateway: GatewayConfig) -> dict[str, Any]:
    return {
        "MAX_CONTENT_LENGTH": gateway.server.max_body_bytes,
        "SYNC_THREADS": gateway.server.sync_threads,
    }


class _ClientJSON(DefaultJSONProvider):
    """Flask's JSON, except that nesting too deep to parse is invalid JSON (400), not a 500.

    Python's parser recurses: a body of 100,000 ``[`` raises RecursionError,
    which Flask does not take for invalid JSON. Everything else reads as in
    plain Flask (NaN and Infinity included); Fanout's own routes parse
    stricter, with ``core.client_json``.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Decode JSON; raise ValueError for what cannot be decoded."""
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deep") from None


def create_app(config: Mapping[str, Any] | None = None) -> BridgeFlask:
    """Create and configure an instance of the Fanout Flask application.

    Settings come from defaults, then the gateway file's ``[server]`` table,
    then ``FANOUT_*`` environment variables, then ``config``. The gateway
    file's ``[app]`` blueprints and job kinds are imported and registered
    after the built-in ones. To add your own in code instead, register them
    on the app this returns (``app.register_blueprint(...)``,
    ``handlers.resources.register_job_kind(app, kind)``).
    """
    source = config_path(config)
    gateway = load_gateway_config(source, os.environ)
    # Imported first: a bad entry is reported before anything else is built.
    code = import_app_code(gateway.app, source)
    # No static folder: the gateway serves no files, and /static would only 404.
    app = BridgeFlask(__name__, static_folder=None)
    app.json = _ClientJSON(app)
    load_settings(app, config, _server_settings(gateway))
    install_request_ids(app)
    names = endpoint_names(gateway.endpoints)
    # Before auth and rate limits: a CORS preflight skips both.
    install_cors(app, gateway.cors)
    # Run by auth's hook once the caller is known: limits count per caller.
    check_rate_limits = install_rate_limits(app, gateway, names)
    install_auth(app, gateway, names, lambda: http_session(app), then=check_rate_limits)
    install_error_handlers(app)
    install_metrics(app)
    install_resources(app, gateway)
    for kind in shipped_kinds(app):
        register_job_kind(app, kind)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(proxy.blueprint)
    app.register_blueprint(jobs_ui.blueprint)
    app.register_blueprint(jobs.blueprint)
    app.register_blueprint(ops.blueprint)
    app.register_blueprint(openapi.blueprint)
    register_app_code(app, code, source)
    # Prefer code to the gateway file's [app] table? Register yours here, e.g.
    #   app.register_blueprint(shop.blueprint)        (from handlers import shop)
    #   register_job_kind(app, shop.REPORT)
    register_endpoints(app, gateway.endpoints)
    check_route_clashes(app, code, source)
    return app


def create_served_app() -> BridgeFlask:
    """Create the app as served: also the log level (LOG_LEVEL) and the GC (GC_THRESHOLD)."""
    served = create_app()
    set_level(served.config["LOG_LEVEL"])
    # Registered last, so it runs once every other startup hook has built its part.
    served.while_serving(_tuned_gc)
    return served


async def _tuned_gc(app: Flask) -> AsyncIterator[None]:
    # Process-wide, so only for the served app: tests build many apps in one process.
    async with tuned_gc(app.config["GC_THRESHOLD"]):
        yield


# Hypercorn has no setting against h2c upgrades: importing the app (as both
# `hypercorn app:app` and the `fanout` launcher do, in each worker process)
# makes it ignore them unless hypercorn.toml sets allow_h2c_upgrade = true.
refuse_h2c_upgrades()

#: The ASGI entry (``hypercorn -c hypercorn.toml app:app``). The Flask app is
#: built at lifespan startup, so a bad setting is reported as a failed startup.
app = ASGIBridge(create_served_app)
