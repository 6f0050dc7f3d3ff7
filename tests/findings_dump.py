"""Every finding the text extractor gives for every labelled sentence (fixtures/findings/*.yaml), as canonical JSON
lines: the findings-identity check across interpreters and spaCy versions (.ci/run diffs one Python's dump with
another's). Run: python tests/findings_dump.py > findings.jsonl"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hooks.findings import findings_from_text  # noqa: E402


def main() -> int:
    count = 0
    for path in sorted((ROOT / "fixtures" / "findings").glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for index, item in enumerate(data.get("sentences") or []):
            found = findings_from_text(item["text"], "DiagnosticReport/dump", region=item.get("region"))
            record = {"file": path.name, "index": index,
                      "findings": [dataclasses.asdict(f) for f in found]}
            print(json.dumps(record, sort_keys=True, default=str))
            count += 1
    print(f"{count} sentences", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
