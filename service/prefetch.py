"""Prefetch resolution: use the keys the client sent, fetch the missing ones (and the OperationOutcome ones)
from fhirServer, and decide what is unobtainable. Required keys that cannot be had -> 412."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from flask import current_app

from hooks.registry import CdsServiceDefinition
from service import fhirfetch, metrics, report_binaries
from service.errors import CdsError, Issue
from service.fhirurl import UnsafeUrl, canonical_base_url, is_below
from service.hookcall import HookCall
from service.templates import TemplateError, render, token_values

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedPrefetch:
    data: Mapping[str, Any]                 # key -> resource / Bundle / None ("no data")
    unavailable: frozenset[str]             # keys whose data could not be had
    provided: int                           # keys used as they came
    fetched: int                            # keys read from the FHIR server


def _is_outcome(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("resourceType") == "OperationOutcome"


def resolve(definition: CdsServiceDefinition, call: HookCall) -> ResolvedPrefetch:
    config = current_app.config
    deadline = time.monotonic() + float(config["FHIR_FETCH_DEADLINE_SECONDS"])
    data: dict[str, Any] = {}
    missing: dict[str, str | None] = {}      # key -> rendered relative URL (None: template cannot be rendered)
    to_continue: dict[str, Mapping[str, Any]] = {}
    values = token_values(call.context)
    provided = 0
    for key, template in definition.prefetch.items():
        value = call.prefetch.get(key, _ABSENT)
        if value is not _ABSENT and not _is_outcome(value):
            data[key] = value
            provided += 1
            if isinstance(value, Mapping) and value.get("resourceType") == "Bundle" and fhirfetch.next_link(value):
                to_continue[key] = value
            continue
        try:
            missing[key] = render(template, values)
        except TemplateError:
            missing[key] = None

    unavailable = {key for key, url in missing.items() if url is None}
    fetchable = {key: url for key, url in missing.items() if url is not None}
    fetched = 0
    if call.fhir_server and (fetchable or to_continue) and fhir_server_allowed(call.fhir_server, config):
        client = fhirfetch.FhirClient(
            base_url=call.fhir_server,
            access_token=call.fhir_authorization.access_token if call.fhir_authorization else None,
            deadline=deadline,
            max_pages=int(config["FHIR_MAX_PAGES"]),
            max_response_bytes=int(config["FHIR_MAX_RESPONSE_BYTES"]),
        )
        jobs: dict[str, Callable[[], fhirfetch.FetchResult]] = {}
        for key, url in fetchable.items():
            jobs[key] = (lambda k=key, u=url: client.fetch(k, u))
        for key, bundle in to_continue.items():
            jobs[key] = (lambda k=key, b=bundle: client.continue_paging(k, b))
        results = fhirfetch.run_jobs(jobs, deadline, int(config["FHIR_FETCH_WORKERS"]))
        for key, result in results.items():
            metrics.observe_fhir_fetch(result.resource_type, result.seconds, result.error)
            if key in to_continue:
                # The first page came with the request; if the rest cannot be read, keep what came.
                if result.error is None:
                    data[key] = result.resource
                continue
            if result.error is None:
                data[key] = result.resource
                fetched += 1
            else:
                unavailable.add(key)
    else:
        unavailable.update(fetchable)

    if call.fhir_server and report_binaries.has_url_only_reports(data) and fhir_server_allowed(call.fhir_server,
                                                                                                  config):
        # issue13: report attachments given by url only (Binary), under the same deadline and token rules.
        data = report_binaries.inline_report_binaries(data, fhirfetch.FhirClient(
            base_url=call.fhir_server,
            access_token=call.fhir_authorization.access_token if call.fhir_authorization else None,
            deadline=deadline,
            max_pages=1,
            max_response_bytes=int(config["FHIR_MAX_RESPONSE_BYTES"]),
        ), int(config["FHIR_FETCH_WORKERS"]))
    metrics.count_prefetch(definition.id, provided=provided, fetched=fetched, unavailable=len(unavailable))
    lacking = sorted(definition.required_prefetch & unavailable)
    if lacking:
        raise CdsError(412, [
            Issue("required prefetch data could not be obtained (not sent, and not readable from fhirServer)",
                  f"prefetch.{key}", "not-found")
            for key in lacking
        ])
    return ResolvedPrefetch(data, frozenset(unavailable), provided, fetched)


def fhir_server_allowed(fhir_server: str, config: Mapping[str, Any]) -> bool:
    """With FHIR_SERVER_ALLOWLIST set, only listed servers (or paths below them) are read, so a caller cannot make
    the service send requests, and the access token, anywhere else. Both sides are canonical (service.fhirurl:
    case, default ports, trailing slashes; dot segments and ';' refused). Empty list: production refuses to start
    unless FHIR_SERVER_ALLOW_ANY, development reads from any server."""
    allowlist = config.get("FHIR_SERVER_ALLOWLIST") or ()
    if not allowlist:
        return True
    try:
        canonical = canonical_base_url(fhir_server)
    except UnsafeUrl:
        canonical = None
    if canonical is not None and any(is_below(canonical, allowed) for allowed in allowlist):
        return True
    logger.warning("fhir_server_not_allowed", extra={"reason": "fhir_server_not_on_allowlist"})
    return False


class _Absent:
    pass


_ABSENT = _Absent()
