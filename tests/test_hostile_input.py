"""Hostile request bodies: size, depth, media types, encodings, duplicate keys, huge strings, wrong JSON types,
unknown or invalid FHIR resources. Never a 500, never HTML, never an echo of what was sent."""
from __future__ import annotations

import copy
import json
import logging

import pytest

from service import create_app
from test_security_helpers import SERVICE_IDS, empty_searchset, full_prefetch, hook_request

SENTINEL = "ECHO-SENTINEL-93b1"
MAX_BYTES = 64 * 1024
MAX_DEPTH = 32
INVOKE = "/cds-services/msk-imaging-patient-view"
FEEDBACK = "/cds-services/msk-imaging-patient-view/feedback"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(
        {
            "AUTH_DISABLED": True,
            "DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'h.db'}",
            "MAX_REQUEST_BYTES": MAX_BYTES,
            "MAX_JSON_DEPTH": MAX_DEPTH,
            "TESTING": True,
        }
    )
    return app.test_client()


def post_raw(client, path, data, content_type="application/json", **kwargs):
    return client.post(path, data=data, content_type=content_type, **kwargs)


def assert_refused(response, *statuses):
    """A client error of the expected kind: OperationOutcome JSON, no HTML, nothing of the request echoed."""
    assert response.status_code in statuses, (response.status_code, response.data[:300])
    text = response.get_data(as_text=True)
    assert SENTINEL not in text
    assert "<html" not in text.lower() and "traceback" not in text.lower()
    body = json.loads(text)
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"] and all(i["severity"] == "error" and i["diagnostics"] for i in body["issue"])


def assert_not_500(response):
    assert response.status_code < 500, (response.status_code, response.data[:300])
    text = response.get_data(as_text=True)
    assert "<html" not in text.lower() and "traceback" not in text.lower()
    if response.status_code >= 400:
        assert SENTINEL not in text


# --- size -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [INVOKE, FEEDBACK])
def test_body_over_the_limit_is_413(client, path):
    body = json.dumps({"hook": "patient-view", "pad": SENTINEL * (MAX_BYTES // len(SENTINEL) + 10)})
    assert_refused(post_raw(client, path, body), 413)


def test_body_over_the_limit_without_content_length_is_413(client):
    # a chunked upload has no Content-Length: the reader must still stop at the limit
    body = b'{"pad":"' + b"a" * (MAX_BYTES + 1024) + b'"}'
    response = client.post(
        INVOKE,
        data=body,
        content_type="application/json",
        environ_overrides={"CONTENT_LENGTH": "", "wsgi.input_terminated": True,
                           "HTTP_TRANSFER_ENCODING": "chunked"},
    )
    assert_refused(response, 413)


def test_lying_content_length_is_not_a_500(client):
    body = json.dumps(hook_request(SERVICE_IDS[0])).encode()
    response = client.post(INVOKE, data=body, headers={"Content-Type": "application/json", "Content-Length": "10"})
    assert_not_500(response)


# --- nesting ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
@pytest.mark.parametrize("bracket", ["[]", "{}"])
def test_too_deep_nesting_is_400(client, depth, bracket):
    depth = min(depth, MAX_BYTES // 8)
    if bracket == "[]":
        body = "[" * depth + "]" * depth
    else:
        body = '{"a":' * depth + "1" + "}" * depth
    assert_refused(post_raw(client, INVOKE, body), 400, 413)


def test_deep_nesting_inside_a_resource_is_400(client):
    request = hook_request(SERVICE_IDS[0])
    node: dict = {}
    request["prefetch"]["patient"]["extension"] = [{"url": "https://x.example", "extension": [node]}]
    for _ in range(MAX_DEPTH):
        child: dict = {}
        node["extension"] = [child]
        node = child
    assert_refused(post_raw(client, INVOKE, json.dumps(request)), 400)


def test_unclosed_deep_nesting_is_400(client):
    assert_refused(post_raw(client, INVOKE, "[" * 5000), 400)


# --- media type and encoding ------------------------------------------------------------------------------------

GOOD_BODY = json.dumps(hook_request(SERVICE_IDS[0]))


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/html",
        "application/xml",
        "application/fhir+xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "",
        "application/jsonp",
        "json",
    ],
)
def test_wrong_content_type_is_refused(client, content_type):
    assert_refused(post_raw(client, INVOKE, GOOD_BODY, content_type=content_type), 415, 400)
    feedback = json.dumps({"feedback": []})
    assert_refused(post_raw(client, FEEDBACK, feedback, content_type=content_type), 415, 400)


@pytest.mark.parametrize("content_type",
                         ["application/json; charset=utf-8", "application/fhir+json", "APPLICATION/JSON"])
def test_json_media_type_variants_accepted(client, content_type):
    assert post_raw(client, INVOKE, GOOD_BODY, content_type=content_type).status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b'{"hook":"patient-view\xff"}',
        b'{"hook":"\xc0\xaf"}',                       # overlong encoding of '/'
        b'{"hook":"\xed\xa0\x80"}',                   # UTF-8 encoded surrogate
        b'{"hook":"\xe2\x82"}',                       # truncated sequence
        "{\"hook\": \"patient-view\"}".encode("utf-16"),
        "{\"hook\": \"patient-view\"}".encode("utf-32"),
        b"\xef\xbb\xbf" + GOOD_BODY.encode(),          # byte order mark
        b"\x00" * 16,
    ],
    ids=["ff", "overlong", "surrogate", "truncated", "utf16", "utf32", "bom", "nul"],
)
def test_invalid_utf8_is_400(client, raw):
    assert_refused(post_raw(client, INVOKE, raw), 400)


# --- JSON syntax ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " ",
        "{",
        "}",
        "{'hook': 'patient-view'}",
        '{"hook": "patient-view",}',
        '{"hook": NaN}',
        '{"hook": Infinity}',
        '{"hook": -Infinity}',
        '{"a": 1} {"b": 2}',
        '{"a": 1}garbage',
        '/* comment */ {"a": 1}',
        '{"a": 0x10}',
        '{"a": 1' + "0" * 5000 + "}",                    # more digits than Python converts to int
        '{"a": "\\x41"}',
        '{"a": "unterminated}',
        "null",
        "true",
        "42",
        '"a string"',
        "[]",
        "[" + json.dumps(hook_request(SERVICE_IDS[0])) + "]",
    ],
)
def test_malformed_json_is_400(client, raw):
    assert_refused(post_raw(client, INVOKE, raw), 400)


@pytest.mark.parametrize(
    "raw",
    [
        '{"hook": "patient-view", "hook": "order-sign"}',
        '{"context": {"patientId": "a", "patientId": "b"}}',
        '{"prefetch": {"patient": {"resourceType": "Patient", "resourceType": "Patient"}}}',
        '{"a": [{"x": 1, "x": 1}]}',
    ],
)
def test_duplicate_keys_are_400(client, raw):
    response = post_raw(client, INVOKE, raw)
    assert_refused(response, 400)
    assert "duplicate" in response.get_data(as_text=True).lower()


def test_duplicate_key_in_feedback_is_400(client):
    assert_refused(post_raw(client, FEEDBACK, '{"feedback": [], "feedback": []}'), 400)


def test_lone_surrogate_escapes_are_not_a_500(client):
    request = hook_request(SERVICE_IDS[0])
    request["prefetch"]["reports"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "DiagnosticReport", "id": "r1", "status": "final",
                                "code": {"text": "MRI SI joints"}, "conclusion": "SURROGATE_SLOT"}}],
    }
    raw = json.dumps(request).replace("SURROGATE_SLOT", "synovitis \\ud800 of the \\udfff SI joint")
    assert_not_500(post_raw(client, INVOKE, raw))
    raw = json.dumps(hook_request(SERVICE_IDS[0])).replace('"pat-1"', '"\\ud83d"', 1)
    assert_not_500(post_raw(client, INVOKE, raw))


# --- huge strings and many items --------------------------------------------------------------------------------

HUGE = SENTINEL * (40 * 1024 // len(SENTINEL))


@pytest.mark.parametrize("field", ["hookInstance", "hook", "fhirServer"])
def test_huge_top_level_strings_are_400_without_echo(client, field):
    request = hook_request(SERVICE_IDS[0])
    request[field] = HUGE
    assert_refused(post_raw(client, INVOKE, json.dumps(request)), 400)


@pytest.mark.parametrize("field", ["patientId", "userId"])
def test_huge_context_strings(client, field):
    request = hook_request(SERVICE_IDS[0])
    request["context"][field] = HUGE
    assert_not_500(post_raw(client, INVOKE, json.dumps(request)))


def test_huge_string_inside_a_resource(client):
    request = hook_request(SERVICE_IDS[0])
    request["prefetch"]["patient"]["name"] = [{"text": HUGE}]
    assert_not_500(post_raw(client, INVOKE, json.dumps(request)))


def test_many_entries_in_a_bundle(client):
    request = hook_request(SERVICE_IDS[0])
    entry = {"resource": {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/pat-1"}}}
    request["prefetch"]["conditions"] = {"resourceType": "Bundle", "type": "searchset", "entry": [entry] * 400}
    assert_not_500(post_raw(client, INVOKE, json.dumps(request)))


def test_feedback_with_many_items(client):
    item = {"card": "c0ffee00-0000-4000-8000-000000000000", "outcome": "overridden",
            "outcomeTimestamp": "2026-11-22T05:00:00Z"}
    assert_not_500(post_raw(client, FEEDBACK, json.dumps({"feedback": [item] * 500})))


# --- wrong JSON types anywhere ----------------------------------------------------------------------------------

WRONG_VALUES = [None, True, 0, -1, 1.5, "", SENTINEL, [], [SENTINEL], {}, {"x": SENTINEL}]


def _paths(value, prefix=()):
    """Every path into a JSON document (dict keys and list indexes), parents before children."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            yield from _paths(item, prefix + (index,))


def _replace(document, path, value):
    document = copy.deepcopy(document)
    if not path:
        return value
    node = document
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return document


def _mutations(document):
    for path in _paths(document):
        for value in WRONG_VALUES:
            yield path, _replace(document, path, value)


@pytest.mark.parametrize("service_id", SERVICE_IDS)
def test_wrong_type_at_every_path_of_a_request(client, service_id):
    """Each field of a valid request replaced by each wrong type, one at a time."""
    request = hook_request(service_id)
    tried = 0
    for path, mutated in _mutations(request):
        response = post_raw(client, f"/cds-services/{service_id}", json.dumps(mutated))
        assert response.status_code < 500, (path, response.status_code)
        if response.status_code >= 400:
            assert SENTINEL not in response.get_data(as_text=True), path
        tried += 1
    assert tried > 300


def test_wrong_type_at_every_path_of_feedback(client):
    body = {
        "feedback": [
            {
                "card": "c0ffee00-0000-4000-8000-000000000000",
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": "c0ffee00-0000-4000-8000-000000000001"}],
                "overrideReason": {"reason": {"code": "x", "system": "https://x.example", "display": "X"},
                                   "userComment": "c"},
                "outcomeTimestamp": "2026-11-22T05:00:00Z",
            }
        ]
    }
    for path, mutated in _mutations(body):
        response = post_raw(client, FEEDBACK, json.dumps(mutated))
        assert response.status_code < 500, (path, response.status_code)
        if response.status_code >= 400:
            assert SENTINEL not in response.get_data(as_text=True), path


# --- FHIR content: unknown types, invalid resources -------------------------------------------------------------

BAD_RESOURCES = {
    "unknown_type": {"resourceType": "Spaceship", "id": "x"},
    "r5_only_type": {"resourceType": "ActorDefinition", "id": "x"},
    "removed_in_r4b": {"resourceType": "MedicinalProduct", "id": "x"},
    "no_resource_type": {"id": "x", "status": "final"},
    "resource_type_number": {"resourceType": 7},
    "resource_type_object": {"resourceType": {"x": 1}},
    "invalid_date": {"resourceType": "Patient", "id": "p", "birthDate": SENTINEL},
    "invalid_code_type": {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
                          "code": SENTINEL},
    "unknown_element": {"resourceType": "DiagnosticReport", "id": "d", "status": "final",
                        "code": {"text": "x"}, SENTINEL: 1},
    "bad_status": {"resourceType": "DiagnosticReport", "id": "d", "status": SENTINEL, "code": {"text": "x"}},
    "contained_unknown": {"resourceType": "DiagnosticReport", "id": "d", "status": "final", "code": {"text": "x"},
                          "contained": [{"resourceType": "Spaceship"}]},
    "bundle_entry_not_object": {"resourceType": "Bundle", "type": "searchset", "entry": [SENTINEL, 1, None]},
    "bundle_entry_without_resource": {"resourceType": "Bundle", "type": "searchset", "entry": [{"fullUrl": "x"}]},
    "bundle_entry_list": {"resourceType": "Bundle", "type": "searchset", "entry": {"resource": {}}},
    "bundle_of_bundles": {"resourceType": "Bundle", "type": "searchset",
                          "entry": [{"resource": {"resourceType": "Bundle", "type": "searchset",
                                                  "entry": [{"resource": {"resourceType": "Spaceship"}}]}}]},
    "bundle_mixed_types": {"resourceType": "Bundle", "type": "searchset",
                           "entry": [{"resource": {"resourceType": "Patient", "id": "p"}},
                                     {"resource": {"resourceType": "Condition", "subject": 5}}]},
    "operation_outcome": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]},
    "string_instead_of_resource": SENTINEL,
    "list_instead_of_resource": [{"resourceType": "Patient"}],
    "number_instead_of_resource": 42,
}


@pytest.mark.parametrize("service_id", SERVICE_IDS)
@pytest.mark.parametrize("key", sorted(full_prefetch()))
@pytest.mark.parametrize("bad", sorted(BAD_RESOURCES))
def test_bad_fhir_in_prefetch_is_never_a_500(client, service_id, key, bad):
    prefetch = full_prefetch()
    prefetch[key] = BAD_RESOURCES[bad]
    response = post_raw(client, f"/cds-services/{service_id}", json.dumps(hook_request(service_id, prefetch)))
    assert_not_500(response)


@pytest.mark.parametrize("service_id", SERVICE_IDS[1:])
@pytest.mark.parametrize("bad", sorted(BAD_RESOURCES))
def test_bad_fhir_in_draft_orders_is_never_a_500(client, service_id, bad):
    request = hook_request(service_id)
    request["context"]["draftOrders"]["entry"].append({"resource": BAD_RESOURCES[bad]})
    assert_not_500(post_raw(client, f"/cds-services/{service_id}", json.dumps(request)))
    request["context"]["draftOrders"] = BAD_RESOURCES[bad]
    assert_not_500(post_raw(client, f"/cds-services/{service_id}", json.dumps(request)))


def test_a_bad_element_among_good_resources_is_dropped_not_fatal(client, caplog):
    prefetch = full_prefetch()
    prefetch["conditions"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": BAD_RESOURCES["invalid_code_type"]},
                  {"resource": {"resourceType": "Condition", "id": "ok", "subject": {"reference": "Patient/pat-1"},
                                "code": {"text": "sacroiliitis"}}}],
    }
    with caplog.at_level(logging.INFO, logger="service.request"):
        response = post_raw(client, INVOKE, json.dumps(hook_request(SERVICE_IDS[0], prefetch)))
    assert response.status_code == 200
    # said so: the request log line counts what was dropped, by element path (never what it contained)
    line = next(r for r in caplog.records if r.getMessage() == "request")
    assert line.intake_dropped >= 1
    assert "Condition.code:invalid=1" in line.intake
    assert SENTINEL not in line.intake


# --- methods and paths ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_is_405(client, method):
    response = client.open(INVOKE, method=method)
    assert_refused(response, 405)
    assert "POST" in response.headers.get("Allow", "")


@pytest.mark.parametrize(
    "path",
    [
        "/cds-services/" + SENTINEL,
        "/cds-services/" + "x" * 5000,
        "/cds-services/%00",
        "/cds-services/..%2f..%2fetc%2fpasswd",
        "/cds-services/msk-imaging-patient-view/feedback/extra",
        "/cds-services/%F0%9F%92%A9",
        "/" + SENTINEL,
    ],
)
def test_unknown_paths_are_404_without_echo(client, path):
    response = post_raw(client, path, GOOD_BODY)
    assert_refused(response, 404, 405)


def test_query_string_is_ignored_and_not_echoed(client):
    response = post_raw(client, INVOKE + "?patient=" + SENTINEL, GOOD_BODY)
    assert response.status_code == 200
    assert SENTINEL not in response.get_data(as_text=True)


def test_empty_searchsets_with_total_wrong_type(client):
    prefetch = full_prefetch()
    prefetch["reports"] = dict(empty_searchset(), total="many")
    assert_not_500(post_raw(client, INVOKE, json.dumps(hook_request(SERVICE_IDS[0], prefetch))))


# --- width: many keys, many items (within the size limit) ---------------------------------------------------------


def test_thousands_of_unknown_prefetch_keys(client):
    request = hook_request(SERVICE_IDS[0])
    request["prefetch"].update({f"k{i}": {"resourceType": "Patient"} for i in range(1500)})
    assert_not_500(post_raw(client, INVOKE, json.dumps(request)))


def test_thousands_of_selections_and_draft_orders(client):
    request = hook_request(SERVICE_IDS[1])
    order = request["context"]["draftOrders"]["entry"][0]
    request["context"]["draftOrders"]["entry"] = [order] * 300
    request["context"]["selections"] = [f"MedicationRequest/x{i}" for i in range(3000)]
    assert_not_500(post_raw(client, "/cds-services/msk-imaging-order-select", json.dumps(request)))


def test_thousands_of_context_keys(client):
    request = hook_request(SERVICE_IDS[0])
    request["context"].update({f"extra{i}": i for i in range(3000)})
    assert_not_500(post_raw(client, INVOKE, json.dumps(request)))


# -- the depth bound works on the bytes: it must agree with a walk of the parsed value ------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

from service.jsonbody import _depth_exceeds  # noqa: E402

_JSON_TEXT = st.text(alphabet=st.sampled_from(list('ab[]{}"\\\u00e9\n')), max_size=8)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _JSON_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_JSON_TEXT, children, max_size=4),
    max_leaves=40,
)


def _walked_depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_walked_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_walked_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=400, deadline=None)
@given(_JSON_VALUES, st.booleans())
def test_depth_bound_on_bytes_agrees_with_the_parsed_value(value, ascii_only):
    """Brackets, quotes and backslashes inside strings (escaped or not, ASCII or UTF-8) never move the count."""
    data = json.dumps(value, ensure_ascii=ascii_only).encode()
    depth = _walked_depth(value)
    assert not _depth_exceeds(data, depth)
    if depth:
        assert _depth_exceeds(data, depth - 1)
