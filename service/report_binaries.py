"""Report attachments sent by `url` only (a Binary on the EHR's FHIR server): read them within the prefetch deadline
and with the prefetch token rules (only from the fhirServer's origin, the bearer token only there), and put their
content inline so the report reader sees the text. An attachment that cannot be read stays url-only (counted as
unread by the findings, never an error)."""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urljoin

from service import fhirfetch, metrics

REPORT_TYPES = frozenset({"DiagnosticReport", "DocumentReference"})
# Attachments worth reading as text (others, PDF and images, are not fetched at all).
TEXT_TYPES = frozenset({"text/plain", "text/html", "application/xhtml+xml", "text/rtf", "application/rtf",
                        "text/richtext"})
MAX_BINARIES = 20               # per request: a chart with hundreds of linked documents must not stall the call


def _resources(value: Any) -> Iterator[dict[str, Any]]:
    if not isinstance(value, dict):
        return
    if value.get("resourceType") == "Bundle":
        for entry in value.get("entry") or ():
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                yield entry["resource"]
    else:
        yield value


def _attachments(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if resource.get("resourceType") == "DiagnosticReport":
        items = resource.get("presentedForm")
        candidates = items if isinstance(items, list) else []
    elif resource.get("resourceType") == "DocumentReference":
        content = resource.get("content")
        candidates = [c.get("attachment") for c in content if isinstance(c, dict)] if isinstance(content, list) else []
    else:
        candidates = []
    for attachment in candidates:
        if isinstance(attachment, dict):
            yield attachment


def _wanted(attachment: Mapping[str, Any]) -> bool:
    if attachment.get("data") or not isinstance(attachment.get("url"), str) or not attachment["url"].strip():
        return False
    media = attachment.get("contentType")
    return media is None or (isinstance(media, str) and media.split(";")[0].strip().lower() in TEXT_TYPES)


def _needs_binaries(value: Any) -> bool:
    return any(_wanted(a) for r in _resources(value) if r.get("resourceType") in REPORT_TYPES
               for a in _attachments(r))


def has_url_only_reports(data: Mapping[str, Any]) -> bool:
    """Whether any report in the prefetch data has a text attachment given by url only."""
    return any(_needs_binaries(value) for value in data.values())


def _fetch_binary(client: fhirfetch.FhirClient, key: str, url: str) -> fhirfetch.FetchResult:
    result = client.fetch(key, url)     # a relative url; same-origin and token rules are the client's
    if result.error is None and (result.resource or {}).get("resourceType") != "Binary":
        result.error, result.resource = "not_binary", None
    return result


def inline_report_binaries(data: Mapping[str, Any], client: fhirfetch.FhirClient,
                           workers: int) -> Mapping[str, Any]:
    """`data` with the url-only text attachments of its reports filled from the FHIR server (a copy where changed;
    the request's own objects are never modified)."""
    keys = [key for key, value in data.items() if _needs_binaries(value)]
    if not keys:
        return data
    out = dict(data)
    targets: list[tuple[dict[str, Any], str]] = []
    base = client.base_url.rstrip("/") + "/"
    for key in keys:
        out[key] = copy.deepcopy(data[key])
        for resource in _resources(out[key]):
            if resource.get("resourceType") not in REPORT_TYPES:
                continue
            for attachment in _attachments(resource):
                if not _wanted(attachment) or len(targets) >= MAX_BINARIES:
                    continue
                absolute = urljoin(base, attachment["url"].strip())
                if client.same_origin(absolute) and absolute.startswith(base):
                    targets.append((attachment, absolute[len(base):]))
    jobs: dict[str, Callable[[], fhirfetch.FetchResult]] = {
        f"binary{n}": (lambda k=f"binary{n}", u=relative: _fetch_binary(client, k, u))
        for n, (_, relative) in enumerate(targets)
    }
    results = fhirfetch.run_jobs(jobs, client.deadline, workers)
    for n, (attachment, _) in enumerate(targets):
        result = results.get(f"binary{n}")
        if result is None:
            continue
        metrics.observe_fhir_fetch("Binary", result.seconds, result.error)
        binary = result.resource
        if result.error is None and binary and isinstance(binary.get("data"), str):
            attachment["data"] = binary["data"]
            if not attachment.get("contentType") and isinstance(binary.get("contentType"), str):
                attachment["contentType"] = binary["contentType"]
    return out

