"""HTTP side of the MSK imaging CDS Hooks 2.0 service; `create_app` builds the Flask app (no I/O on import)."""
from __future__ import annotations

from typing import Any, Mapping


def create_app(settings: Mapping[str, Any] | None = None, services: Any = None):
    """Build the Flask app (see service.app.create_app); `services` is a hooks.registry.ServiceRegistry."""
    from service.app import create_app as _create_app

    return _create_app(settings, services)


__all__ = ["create_app"]
