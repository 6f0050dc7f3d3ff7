"""The floor: a bare Flask app in the same process that parses the same request JSON and answers a fixed cards JSON
of the same size. What Flask, Werkzeug's test client and JSON parsing cost with no CDS work at all."""
from __future__ import annotations

import json

from flask import Flask, Response, request

from .stats import Series


def floor_app(answer: bytes) -> Flask:
    app = Flask("floor")

    @app.post("/cds-services/<service_id>")
    def invoke(service_id: str) -> Response:
        json.loads(request.get_data())
        return Response(answer, status=200, content_type="application/json")

    return app


def measure(bodies: list[bytes], answer: bytes, warmup: int = 20) -> Series:
    from .inprocess import Poster

    poster = Poster(floor_app(answer))
    for body in bodies[:warmup]:
        poster.post("patient-view", body)
    series = Series("floor")
    for body in bodies:
        poster.timed("patient-view", body, series)
    return series
