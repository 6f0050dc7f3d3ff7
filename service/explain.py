"""The optional "Why this card?" link (EXPLANATION_LINKS, off by default) and the page it opens.

The link carries one short-lived signed token and nothing else: the rule, the facts and checks it read (by name),
the citations and the knowledge version, signed with EXPLANATION_SECRET and valid EXPLANATION_TTL_SECONDS. No
patient data is in the URL or in the token, and the page shows none either (the PHI rules of the logs): it explains
the rule and its evidence from the knowledge files, not this patient's values. A bad or expired token is a bare 404.
Auth: the page is opened by a clinician's browser from the EHR, without the EHR's JWT; the signed token is its
authorisation (service.auth leaves /explain/ to this module).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from flask import Blueprint, Flask, Response, current_app, render_template_string, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from hooks.knowledge import knowledge_version
from hooks.knowledge.cards import card_wording
from hooks.knowledge.clinical import clinical_knowledge

PREFIX = "/explain/"
EXTENSION_KEY = "msk_cds.explain"
LINK_LABEL = "Why this card?"
_SALT = "msk-cds.card-explanation"
MAX_LINKS = 3                       # the card budget: the explanation takes the place of the last paper link

bp = Blueprint("explain", __name__)


def init_app(app: Flask) -> None:
    """Serve the page and add links only when EXPLANATION_LINKS is on; it then needs a real secret."""
    if not app.config.get("EXPLANATION_LINKS"):
        return
    secret = app.config.get("EXPLANATION_SECRET") or ""
    if len(secret) < 32:
        raise ValueError("EXPLANATION_LINKS needs EXPLANATION_SECRET (32 characters or more) to sign the links")
    app.extensions[EXTENSION_KEY] = URLSafeTimedSerializer(secret, salt=_SALT)
    app.register_blueprint(bp)


def _serializer() -> URLSafeTimedSerializer | None:
    return current_app.extensions.get(EXTENSION_KEY)


def _claims(card: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the page needs to explain the card: names and ids from our knowledge only, never patient values."""
    extension = card.get("extension")
    provenance = extension.get("org.msk-cds.provenance") if isinstance(extension, Mapping) else None
    if not isinstance(provenance, Mapping) or not isinstance(provenance.get("rule"), str):
        return None
    return {
        "r": provenance["rule"],
        "s": provenance.get("step"),
        "v": knowledge_version(),
        "f": sorted({f["name"] for f in provenance.get("facts", ()) if isinstance(f, Mapping) and "name" in f}),
        "g": sorted({f["rule"] for f in provenance.get("flags", ()) if isinstance(f, Mapping) and "rule" in f}),
        "c": list(provenance.get("citations", ())),
    }


def _base_url() -> str:
    public = str(current_app.config.get("PUBLIC_BASE_URL") or "").rstrip("/")
    return public or request.host_url.rstrip("/")


def add_links(cards: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Each card gets a "Why this card?" link when the setting is on (else the cards are returned as they are)."""
    serializer = _serializer()
    if serializer is None:
        return list(cards)
    out = []
    for card in cards:
        claims = _claims(card)
        if claims is None:
            out.append(card)
            continue
        link = {"label": LINK_LABEL, "url": f"{_base_url()}{PREFIX}{serializer.dumps(claims)}", "type": "absolute"}
        links = list(card.get("links") or ())[: MAX_LINKS - 1]
        out.append({**card, "links": [*links, link]})
    return out


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<title>Why this card: {{ title }}</title>
<style>body{font:15px/1.45 system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.3rem}h2{font-size:1.05rem;margin-top:1.6rem}small{color:#666}li{margin:.25rem 0}</style></head>
<body>
<h1>{{ title }}</h1>
<p>{{ summary }}</p>
<h2>What the guideline recommends</h2>
<ul>{% for line in recommendation %}<li>{{ line }}</li>{% endfor %}</ul>
{% if notes %}<h2>Notes and cautions</h2><ul>{% for line in notes %}<li>{{ line }}</li>{% endfor %}</ul>{% endif %}
{% if facts %}<h2>What the rule looked at in the record</h2>
<ul>{% for line in facts %}<li>{{ line }}</li>{% endfor %}</ul>{% endif %}
{% if checks %}<h2>Safety checks that applied</h2><ul>{% for line in checks %}<li>{{ line }}</li>{% endfor %}</ul>{% endif %}
<h2>Evidence</h2>
<ul>{% for s in sources %}<li>{{ s.citation }}{% if s.url %} <a href="{{ s.url }}" rel="noreferrer">{{ s.url }}</a>{% endif %}
<br><small>Citation {{ s.status }}; match to the guideline summary: {{ s.match }}</small></li>{% endfor %}</ul>
<p><small>Rule {{ rule }} · knowledge {{ version }}{% if stale %} (the card was made with {{ card_version }}){% endif %}
· review status of the cited sources: {{ review }}. Cards advise; the clinician decides.</small></p>
</body></html>"""


@bp.get(f"{PREFIX}<token>")
def page(token: str) -> Response:
    serializer = _serializer()
    ttl = int(current_app.config.get("EXPLANATION_TTL_SECONDS") or 900)
    try:
        claims = serializer.loads(token, max_age=ttl) if serializer is not None else None
    except BadSignature:                     # includes SignatureExpired
        claims = None
    if not isinstance(claims, Mapping) or not isinstance(claims.get("r"), str):
        return Response("Not found\n", status=404, content_type="text/plain; charset=utf-8")
    body = render_template_string(_PAGE, **_explanation(claims))
    response = Response(body, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex"
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response


def _explanation(claims: Mapping[str, Any]) -> dict[str, Any]:
    """The page's content from the knowledge files alone (the card's wording unfilled: no patient values)."""
    k, cards = clinical_knowledge(), card_wording()
    rule = str(claims["r"])
    wording = cards.rules.get(rule)
    pathway_id, _, step_id = rule.partition(".")
    pathway = k.pathways.get(pathway_id)
    step = next((s for s in pathway.steps if s.id == step_id), None) if pathway else None
    title = pathway.title if pathway else rule
    summary = ""
    recommendation: list[str] = []
    notes: list[str] = []
    if step is not None:
        title = f"{pathway.title}: {step.title}"
        recommendation = list(step.next)
        notes = list(pathway.notes)
    elif pathway_id == "order_check":
        check = next((c for c in k.pathway_file.order_checks if c.rule == rule), None)
        if check is not None:
            title, recommendation = check.summary, [check.detail]
    elif pathway_id == "safety" and step_id in k.checks:
        title = f"Safety check: {step_id.replace('_', ' ')}"
        recommendation = [_unfilled(k.checks[step_id].wording)]
    if wording is not None:
        summary = _unfilled(wording.step)
        if wording.caution:
            notes.insert(0, _unfilled(wording.caution))
    labels = k.pathway_file.fact_labels
    facts = [labels.get(name, name.replace("_", " ")) for name in claims.get("f") or ()]
    checks = [_unfilled(k.checks[r.split(".", 1)[1]].wording) for r in claims.get("g") or ()
              if r.startswith("safety.") and r.split(".", 1)[1] in k.checks]
    sources = [k.evidence[c] for c in claims.get("c") or () if c in k.evidence]
    review = "verified" if sources and all(s.status == "verified" for s in sources) else "not all verified"
    return {"title": title, "summary": summary, "recommendation": recommendation, "notes": notes, "facts": facts,
            "checks": list(dict.fromkeys(checks)), "sources": sources, "rule": rule, "version": knowledge_version(),
            "card_version": claims.get("v"), "stale": claims.get("v") != knowledge_version(), "review": review}


def _unfilled(template: str) -> str:
    """A wording template without patient values: each {field} reads as "…" (parameters are filled)."""
    from hooks.knowledge.cards import parameters

    params = vars(parameters(clinical_knowledge()))

    class _Blank(dict):
        def __missing__(self, key: str) -> str:
            return "…"

    class _Params:
        def __getattr__(self, name: str) -> Any:
            return params.get(name, "…")

    try:
        return template.format_map(_Blank(param=_Params()))
    except (ValueError, AttributeError, IndexError, KeyError):
        return template
