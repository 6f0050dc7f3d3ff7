"""`msk-cds replay`: send a CDS Hooks request file (or every request in a fixture folder) to a running service and
print the cards readably, for integrators testing against a deployed instance."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, TextIO

import requests

HOOK_SERVICES = {
    "patient-view": "msk-imaging-patient-view",
    "order-select": "msk-imaging-order-select",
    "order-sign": "msk-imaging-order-sign",
}
MAX_FILES = 500
_MD_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!:|~=<>])")
_HTML = (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&#39;", "'"), ("&amp;", "&"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a CDS Hooks request JSON file, or a folder of them (e.g. fixtures/requests)")
    parser.add_argument("--url", required=True, help="base URL of the running service, e.g. http://127.0.0.1:8080")
    parser.add_argument("--service", help="CDS service id (default: from the request's hook)")
    parser.add_argument("--token", help="bearer token (JWT) to send in the Authorization header")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer (default 10)")
    parser.add_argument("--json", action="store_true", help="print the raw response JSON instead of the summary")


def markdown_to_text(detail: str) -> str:
    """GFM detail as plain text: escapes, emphasis and link syntax removed."""
    text = re.sub(r"\[([^\]]*)\]\(<?([^)>]*)>?\)", r"\1 (\2)", detail)
    text = text.replace("**", "").replace("\u2003", " ")
    text = re.sub(r"(?m)^_(.*)_$", r"\1", text)
    text = _MD_ESCAPE.sub(r"\1", text)
    for entity, char in _HTML:
        text = text.replace(entity, char)
    return text


def request_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.glob("*.json"))[:MAX_FILES]
    return [path]


def _action_line(action: Mapping[str, Any]) -> str:
    kind = action.get("type", "?")
    resource = action.get("resource") if isinstance(action.get("resource"), Mapping) else {}
    if kind == "delete":
        return f"delete {action.get('resourceId', '?')}"
    rtype = resource.get("resourceType", "?")
    if rtype == "MedicationRequest":
        concept = resource.get("medicationCodeableConcept") or {}
        coding = (concept.get("coding") or [{}])[0]
        dosage = (resource.get("dosageInstruction") or [{}])[0].get("text", "")
        return f"{kind} MedicationRequest: {concept.get('text', '?')} [RxNorm {coding.get('code', '?')}] {dosage}".rstrip()
    if rtype == "ServiceRequest":
        concept = resource.get("code") or {}
        coding = (concept.get("coding") or [{}])[0]
        return f"{kind} ServiceRequest: {concept.get('text', '?')} [{coding.get('code', '?')}] ({resource.get('priority', 'routine')})"
    return f"{kind} {rtype}: {action.get('description', '')}"


NO_REPEAT_NOTE = ("  (no cards: this patient's order-select call above already showed its cards; order-sign does not "
                  "repeat a card shown at order-select for the same patient and order within NO_REPEAT_WINDOW_HOURS, "
                  "24 h by default)\n")


def print_cards(body: Mapping[str, Any], out: TextIO, no_cards_note: str | None = None) -> None:
    cards = body.get("cards") or []
    if not cards:
        out.write(no_cards_note or "  (no cards)\n")
    for number, card in enumerate(cards, 1):
        rule = (card.get("extension") or {}).get("org.msk-cds.rule", "")
        out.write(f"\n  [{number}] {card.get('indicator', '?').upper()}: {card.get('summary', '')}\n")
        if rule:
            out.write(f"      rule: {rule}\n")
        source = card.get("source") or {}
        out.write(f"      source: {source.get('label', '')}\n")
        for line in markdown_to_text(card.get("detail", "")).splitlines():
            out.write(f"      | {line}\n")
        suggestions = card.get("suggestions") or []
        if suggestions:
            out.write(f"      suggestions ({card.get('selectionBehavior', '')}):\n")
        for s in suggestions:
            star = " *recommended*" if s.get("isRecommended") else ""
            out.write(f"        - {s.get('label', '')}{star}\n")
            for action in s.get("actions") or []:
                out.write(f"            {_action_line(action)}\n")
        reasons = card.get("overrideReasons") or []
        if reasons:
            out.write("      override reasons: " + "; ".join(r.get("display", r.get("code", "")) for r in reasons) + "\n")


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] if response.text else "(no body)"
    if isinstance(body, Mapping) and body.get("resourceType") == "OperationOutcome":
        parts = []
        for issue in body.get("issue") or []:
            where = ", ".join(issue.get("expression") or [])
            parts.append(f"{issue.get('code', '?')}: {issue.get('diagnostics', '')}" + (f" at {where}" if where else ""))
        return "; ".join(parts) or "OperationOutcome without issues"
    return json.dumps(body)[:300]


def _patient(request: Mapping[str, Any]) -> str | None:
    context = request.get("context")
    return context.get("patientId") if isinstance(context, Mapping) else None


def replay_one(path: Path, args: argparse.Namespace, out: TextIO, selected: set | None = None) -> bool:
    """Send one request file; print the answer. True when the service answered 200. `selected` collects the patients
    whose order-select call in this run returned cards (an order-sign after it says why it has none)."""
    try:
        request = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        out.write(f"{path.name}: cannot read the request ({exc.__class__.__name__})\n")
        return False
    hook = request.get("hook") if isinstance(request, Mapping) else None
    service = args.service or HOOK_SERVICES.get(hook or "")
    if not service:
        out.write(f"{path.name}: no --service given and hook {hook!r} is not one of ours\n")
        return False
    url = f"{args.url.rstrip('/')}/cds-services/{service}"
    headers = {"Content-Type": "application/json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    out.write(f"== {path.name} -> {service}\n")
    try:
        response = requests.post(url, data=json.dumps(request), headers=headers, timeout=args.timeout)
    except requests.RequestException as exc:
        out.write(f"  cannot reach {url}: {exc.__class__.__name__}\n")
        return False
    if response.status_code != 200:
        out.write(f"  HTTP {response.status_code}: {_error_text(response)}\n")
        return False
    try:
        body = response.json()
    except ValueError:
        out.write("  HTTP 200 but the body is not JSON\n")
        return False
    selected = set() if selected is None else selected
    patient = _patient(request)
    has_cards = isinstance(body, Mapping) and bool(body.get("cards"))
    if hook == "order-select" and has_cards and patient:
        selected.add(patient)
    note = NO_REPEAT_NOTE if hook == "order-sign" and patient in selected else None
    if args.json:
        out.write(json.dumps(body, indent=2) + "\n")
        if note and not has_cards:
            out.write(note)
    else:
        print_cards(body, out, note)
    return True


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    files = request_files(Path(args.path))
    if not files:
        out.write(f"no request files at {args.path}\n")
        return 2
    selected: set = set()
    results: Iterable[bool] = [replay_one(p, args, out, selected) for p in files]
    failures = sum(1 for ok in results if not ok)
    if len(files) > 1:
        out.write(f"\n{len(files) - failures} of {len(files)} requests answered 200\n")
    return 1 if failures else 0
