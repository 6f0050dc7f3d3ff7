"""The optional "Why this card?" link (issue 16): off by default; when on, a short-lived signed link with no patient
data in the URL, opening a page with the rule and its evidence and none of this patient's data (the PHI rules of
the logs); a forged, altered or expired link is a bare 404; start-up refuses the links without a real secret."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from itsdangerous import TimestampSigner

from fixtures import build
from service import create_app
from service.conformance import check_response

SECRET = "x" * 40
NAME = "22_d_eligible_screening_missing__patient-view"


def _scenario_app(tmp_path: Path, **settings: Any):
    scenario, hook, request = build.all_requests()[NAME]
    config = build.app_settings(scenario, tmp_path / "cds.sqlite3")
    config.update(settings)
    return create_app(config), hook, request


def _phi_of(request: dict[str, Any]) -> list[str]:
    """Patient id, every resource id and every report sentence of the request: none may reach the URL or page."""
    out = [request["context"]["patientId"]]
    for bundle in request["prefetch"].values():
        if isinstance(bundle, dict):
            out.append(bundle.get("id", ""))
            for entry in bundle.get("entry") or ():
                resource = entry["resource"]
                out.append(resource.get("id", ""))
                if resource.get("conclusion"):
                    out.append(resource["conclusion"][:40])
    return [p for p in out if p and len(p) > 3]


def test_off_by_default_no_link_and_no_page(tmp_path):
    app, hook, request = _scenario_app(tmp_path)
    status, body = build.post(app.test_client(), hook, request)
    assert status == 200 and body["cards"]
    assert not [link for c in body["cards"] for link in c.get("links", []) if "/explain/" in link["url"]]
    assert app.test_client().get("/explain/anything").status_code in (401, 404)


def test_links_on_signed_url_without_phi_and_a_page_without_phi(tmp_path, caplog):
    app, hook, request = _scenario_app(tmp_path, EXPLANATION_LINKS=True, EXPLANATION_SECRET=SECRET,
                                       PUBLIC_BASE_URL="https://cds.example.org")
    client = app.test_client()
    status, body = build.post(client, hook, request)
    assert status == 200 and check_response(body) == []
    phi = _phi_of(request)
    for card in body["cards"]:
        links = card["links"]
        assert len(links) <= 3                                       # the card budget holds with the link
        why = [link for link in links if link["label"] == "Why this card?"]
        assert len(why) == 1 and why[0]["type"] == "absolute"
        url = why[0]["url"]
        assert re.fullmatch(r"https://cds\.example\.org/explain/[A-Za-z0-9_\-.]+", url), url
        assert not [p for p in phi if p in url]
        # the token itself carries only knowledge names (readable base64 JSON, but no patient data)
        assert request["context"]["patientId"] not in json.dumps(card["extension"]["org.msk-cds.provenance"]["rule"])
        caplog.clear()
        with caplog.at_level(logging.INFO):
            page = client.get(url.replace("https://cds.example.org", ""))
        assert page.status_code == 200 and page.content_type.startswith("text/html")
        assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "no-referrer"
        text = page.get_data(as_text=True)
        assert not [p for p in phi if p in text], "patient data on the explanation page"
        rule = card["extension"]["org.msk-cds.rule"]
        assert rule in text and "doi.org" in text                   # the rule and its papers
        # the request log names the route, never the token
        token = url.rsplit("/", 1)[1]
        assert token not in caplog.text


def test_a_forged_altered_or_expired_link_is_a_bare_404(tmp_path, monkeypatch):
    app, hook, request = _scenario_app(tmp_path, EXPLANATION_LINKS=True, EXPLANATION_SECRET=SECRET,
                                       EXPLANATION_TTL_SECONDS=600)
    client = app.test_client()
    _, body = build.post(client, hook, request)
    url = next(link["url"] for link in body["cards"][0]["links"] if "/explain/" in link["url"])
    path = "/explain/" + url.rsplit("/explain/", 1)[1]
    assert client.get(path).status_code == 200
    altered = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
    assert client.get(altered).status_code == 404
    assert client.get("/explain/eyJyIjoic2FmZXR5LmdpX3Jpc2sifQ").status_code == 404       # unsigned claims
    # a link signed 20 minutes ago is past its 10 minutes
    real = TimestampSigner.get_timestamp
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: real(self) - 1200)
    _, body = build.post(client, hook, request)
    old = next(link["url"] for link in body["cards"][0]["links"] if "/explain/" in link["url"])
    monkeypatch.setattr(TimestampSigner, "get_timestamp", real)
    response = client.get("/explain/" + old.rsplit("/explain/", 1)[1])
    assert response.status_code == 404 and response.get_data(as_text=True) == "Not found\n"


def test_the_links_need_a_real_secret(tmp_path):
    scenario, _, _ = build.all_requests()[NAME]
    config = build.app_settings(scenario, tmp_path / "cds.sqlite3")
    config.update(EXPLANATION_LINKS=True, EXPLANATION_SECRET="short")
    with pytest.raises(ValueError, match="EXPLANATION_SECRET"):
        create_app(config)
