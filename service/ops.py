"""Operations routes: liveness and readiness."""
from __future__ import annotations

from flask import Blueprint, Response

from hooks.knowledge import KnowledgeError, knowledge_version
from service.cds import json_response
from service.config import service_registry
from service.storage import get_storage

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up and answering."""
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Ready to serve: the database answers and the knowledge and services are loaded."""
    database = get_storage().ping()
    try:
        knowledge = bool(knowledge_version()) and bool(len(service_registry()))
    except KnowledgeError:
        knowledge = False
    ready = database and knowledge
    checks = {"database": "ok" if database else "failing", "knowledge": "ok" if knowledge else "failing"}
    return json_response({"status": "ready" if ready else "not-ready", "checks": checks}, 200 if ready else 503)
