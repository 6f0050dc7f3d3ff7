"""Load the fixture patients into a FHIR R4 server (the HAPI profile of compose.yaml), one transaction per file.

Reads every *.json under the given paths: a resource, a Bundle, or a CDS Hooks request (its prefetch values). Each
resource is PUT under its own type and id, so the references between fixture resources hold on the server.

    python deploy/load_fixtures.py --fhir-base http://localhost:8081/fhir fixtures/scenarios
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import requests

MAX_FILES = 10_000
TIMEOUT_SECONDS = 30


def resources_in(document: Any) -> Iterator[dict]:
    """FHIR resources carried by a fixture document, with an id (resources without one cannot be PUT)."""
    if not isinstance(document, dict):
        return
    if document.get("resourceType") == "Bundle":
        for entry in document.get("entry") or []:
            if isinstance(entry, dict):
                yield from resources_in(entry.get("resource"))
    elif isinstance(document.get("resourceType"), str):
        if isinstance(document.get("id"), str):
            yield document
    elif isinstance(document.get("prefetch"), dict):
        for value in document["prefetch"].values():
            yield from resources_in(value)


def transaction(resources: list[dict]) -> dict:
    unique = {(r["resourceType"], r["id"]): r for r in resources}
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{kind}/{rid}"}}
            for (kind, rid), r in unique.items()
        ],
    }


def fixture_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.rglob("*.json")) if path.is_dir() else [path])
    return files[:MAX_FILES]


def wait_for(base: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if requests.get(f"{base}/metadata", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"FHIR server at {base} did not answer within {seconds:.0f} s")
        time.sleep(3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fhir-base", required=True, help="FHIR R4 base URL, e.g. http://localhost:8081/fhir")
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for the server to come up")
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    base = args.fhir_base.rstrip("/")
    if args.wait:
        wait_for(base, args.wait)
    loaded = failed = 0
    for path in fixture_files(args.paths):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            print(f"skip {path}: not JSON", file=sys.stderr)
            continue
        resources = list(resources_in(document))
        if not resources:
            continue
        response = requests.post(
            base, json=transaction(resources), timeout=TIMEOUT_SECONDS,
            headers={"Content-Type": "application/fhir+json"},
        )
        if response.ok:
            loaded += len(resources)
        else:
            failed += 1
            print(f"{path}: HTTP {response.status_code}", file=sys.stderr)
    print(f"loaded {loaded} resources; {failed} files failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
