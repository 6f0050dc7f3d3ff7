"""The Flask application factory: settings, storage, extensions (logs, auth, metrics), blueprints, warm-up."""
from __future__ import annotations

from typing import Any, Mapping

from flask import Flask

from service import auth, cors, errors, explain, ledger, logs, metrics, storage
from hooks.registry import ServiceRegistry
from service.config import SERVICES_EXTENSION, check_production, load_settings


def create_app(settings: Mapping[str, Any] | None = None, services: ServiceRegistry | None = None) -> Flask:
    """Build an app. `settings` overrides environment variables of the same names (see service.config); `services`
    is the registry of CDS services to serve (the product's three by default)."""
    app = Flask("service", instance_relative_config=False)
    if services is None:
        from hooks.services import default_registry

        services = default_registry()
    app.extensions[SERVICES_EXTENSION] = services
    app.config.update(load_settings(settings))
    check_production(app.config)          # PRODUCTION: unsafe settings stop start-up here, before anything opens
    # Werkzeug also bounds the body it reads; our own reader checks again (chunked bodies have no length).
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_REQUEST_BYTES"]
    app.json.sort_keys = False
    app.url_map.strict_slashes = False

    errors.init_app(app)
    cors.init_app(app)
    storage.init_app(app)
    logs.init_app(app)
    auth.init_app(app)
    metrics.init_app(app)
    ledger.init_app(app)
    explain.init_app(app)

    from service.cds import bp as cds_bp
    from service.ops import bp as ops_bp

    app.register_blueprint(cds_bp)
    app.register_blueprint(ops_bp)
    # Tables other modules defined on storage.metadata while being imported above.
    app.extensions[storage.EXTENSION_KEY].create_schema()

    from hooks.warmup import warm_up

    warm_up()
    return app
