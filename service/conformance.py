"""CDS Hooks 2.0 response conformance checker: `check_response(json)` lists every rule a service response breaks
(empty list = conformant). Used by every engineer's tests on every response."""
from __future__ import annotations

import uuid
from typing import Any, Iterator
from urllib.parse import urlsplit

INDICATORS = ("info", "warning", "critical")
SELECTION_BEHAVIORS = ("at-most-one", "any")
ACTION_TYPES = ("create", "update", "delete")
LINK_TYPES = ("absolute", "smart")
MAX_SUMMARY = 140


def _empty_values(value: Any, path: str) -> Iterator[str]:
    """Null, "", [] and {} anywhere (the top-level `cards: []` is allowed by the spec)."""
    if value is None:
        yield f"{path}: null value"
    elif isinstance(value, str):
        if value == "":
            yield f"{path}: empty string"
    elif isinstance(value, dict):
        if not value:
            yield f"{path}: empty object"
        for key, item in value.items():
            yield from _empty_values(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        if not value and path != "cards":
            yield f"{path}: empty array"
        for index, item in enumerate(value):
            yield from _empty_values(item, f"{path}[{index}]")


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_absolute_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _coding(value: Any, path: str, display_required: bool) -> Iterator[str]:
    if not isinstance(value, dict):
        yield f"{path}: must be a Coding object"
        return
    for name in ("system", "code"):
        if not _nonempty_str(value.get(name)):
            yield f"{path}.{name}: required string"
    if display_required and not _nonempty_str(value.get("display")):
        yield f"{path}.display: required string"


def _action(action: Any, path: str) -> Iterator[str]:
    if not isinstance(action, dict):
        yield f"{path}: must be an object"
        return
    kind = action.get("type")
    if kind not in ACTION_TYPES:
        yield f"{path}.type: must be one of {', '.join(ACTION_TYPES)}"
    if not _nonempty_str(action.get("description")):
        yield f"{path}.description: required string"
    resource = action.get("resource")
    if kind in ("create", "update"):
        if not isinstance(resource, dict) or not _nonempty_str(resource.get("resourceType")):
            yield f"{path}.resource: a FHIR resource is required for {kind}"
    if kind == "delete" and not _nonempty_str(action.get("resourceId")) and resource is None:
        yield f"{path}.resourceId: SHOULD name the resource to delete"
    if "resourceId" in action and not _nonempty_str(action["resourceId"]):
        yield f"{path}.resourceId: must be a relative reference string"


def _suggestion(suggestion: Any, path: str) -> Iterator[str]:
    if not isinstance(suggestion, dict):
        yield f"{path}: must be an object"
        return
    if not _nonempty_str(suggestion.get("label")):
        yield f"{path}.label: required string"
    if "uuid" in suggestion and not _is_uuid(suggestion["uuid"]):
        yield f"{path}.uuid: must be a UUID string"
    if "isRecommended" in suggestion and not isinstance(suggestion["isRecommended"], bool):
        yield f"{path}.isRecommended: must be a boolean"
    actions = suggestion.get("actions")
    if actions is not None:
        if not isinstance(actions, list):
            yield f"{path}.actions: must be an array"
        else:
            for index, action in enumerate(actions):
                yield from _action(action, f"{path}.actions[{index}]")


def _link(link: Any, path: str) -> Iterator[str]:
    if not isinstance(link, dict):
        yield f"{path}: must be an object"
        return
    if not _nonempty_str(link.get("label")):
        yield f"{path}.label: required string"
    if not _is_absolute_url(link.get("url")):
        yield f"{path}.url: required absolute URL"
    if link.get("type") not in LINK_TYPES:
        yield f"{path}.type: must be absolute or smart"
    if "appContext" in link and link.get("type") != "smart":
        yield f"{path}.appContext: only allowed with type smart"
    if "autolaunchable" in link and not isinstance(link["autolaunchable"], bool):
        yield f"{path}.autolaunchable: must be a boolean"


def _source(source: Any, path: str) -> Iterator[str]:
    if not isinstance(source, dict):
        yield f"{path}: required object"
        return
    if not _nonempty_str(source.get("label")):
        yield f"{path}.label: required string"
    if "url" in source and not _is_absolute_url(source["url"]):
        yield f"{path}.url: must be an absolute URL"
    if "icon" in source and not _is_absolute_url(source["icon"]):
        yield f"{path}.icon: must be an absolute URL"
    if "topic" in source:
        yield from _coding(source["topic"], f"{path}.topic", display_required=False)


def check_card(card: Any, path: str = "card") -> list[str]:
    """Problems of one card (the rules of CDS Hooks 2.0 "Card Attributes")."""
    if not isinstance(card, dict):
        return [f"{path}: must be an object"]
    problems: list[str] = []
    if "uuid" in card and not _is_uuid(card["uuid"]):
        problems.append(f"{path}.uuid: must be a UUID string")
    summary = card.get("summary")
    if not _nonempty_str(summary):
        problems.append(f"{path}.summary: required string")
    elif len(summary) >= MAX_SUMMARY:
        problems.append(f"{path}.summary: must be shorter than {MAX_SUMMARY} characters")
    if "detail" in card and not isinstance(card["detail"], str):
        problems.append(f"{path}.detail: must be a (Markdown) string")
    if card.get("indicator") not in INDICATORS:
        problems.append(f"{path}.indicator: must be one of {', '.join(INDICATORS)}")
    problems.extend(_source(card.get("source"), f"{path}.source"))
    suggestions = card.get("suggestions")
    if suggestions is not None:
        if not isinstance(suggestions, list):
            problems.append(f"{path}.suggestions: must be an array")
        else:
            for index, suggestion in enumerate(suggestions):
                problems.extend(_suggestion(suggestion, f"{path}.suggestions[{index}]"))
            if suggestions and card.get("selectionBehavior") not in SELECTION_BEHAVIORS:
                problems.append(f"{path}.selectionBehavior: required with suggestions (at-most-one or any)")
    elif "selectionBehavior" in card and card["selectionBehavior"] not in SELECTION_BEHAVIORS:
        problems.append(f"{path}.selectionBehavior: must be at-most-one or any")
    reasons = card.get("overrideReasons")
    if reasons is not None:
        if not isinstance(reasons, list):
            problems.append(f"{path}.overrideReasons: must be an array")
        else:
            for index, reason in enumerate(reasons):
                problems.extend(_coding(reason, f"{path}.overrideReasons[{index}]", display_required=True))
    links = card.get("links")
    if links is not None:
        if not isinstance(links, list):
            problems.append(f"{path}.links: must be an array")
        else:
            for index, link in enumerate(links):
                problems.extend(_link(link, f"{path}.links[{index}]"))
    extension = card.get("extension")
    if extension is not None and not isinstance(extension, dict):
        problems.append(f"{path}.extension: must be an object")
    return problems


def check_response(response: Any) -> list[str]:
    """Every CDS Hooks 2.0 rule a service response breaks; [] when it is conformant."""
    if not isinstance(response, dict):
        return ["response: must be a JSON object"]
    problems: list[str] = list(_empty_values(response, ""))
    cards = response.get("cards")
    if not isinstance(cards, list):
        problems.append("cards: required array")
        cards = []
    uuids: list[str] = []
    for index, card in enumerate(cards):
        problems.extend(check_card(card, f"cards[{index}]"))
        if isinstance(card, dict) and isinstance(card.get("uuid"), str):
            uuids.append(card["uuid"])
        for suggestion in (card.get("suggestions") or []) if isinstance(card, dict) else []:
            if isinstance(suggestion, dict) and isinstance(suggestion.get("uuid"), str):
                uuids.append(suggestion["uuid"])
    if len(uuids) != len(set(uuids)):
        problems.append("cards: card and suggestion uuids must be unique")
    actions = response.get("systemActions")
    if actions is not None:
        if not isinstance(actions, list):
            problems.append("systemActions: must be an array")
        else:
            for index, action in enumerate(actions):
                problems.extend(_action(action, f"systemActions[{index}]"))
    extra = set(response) - {"cards", "systemActions", "extension"}
    if extra:
        problems.append("response: unexpected top-level fields")
    return problems


def check_discovery(response: Any) -> list[str]:
    """Rules of the discovery response: services with hook, description, id; prefetch and extension objects."""
    if not isinstance(response, dict) or not isinstance(response.get("services"), list):
        return ["services: required array"]
    problems: list[str] = []
    for key, value in response.items():
        if key != "services":
            problems.extend(_empty_values(value, key))
    for index, service in enumerate(response["services"]):
        path = f"services[{index}]"
        if not isinstance(service, dict):
            problems.append(f"{path}: must be an object")
            continue
        problems.extend(_empty_values(service, path))
        for name in ("hook", "description", "id"):
            if not _nonempty_str(service.get(name)):
                problems.append(f"{path}.{name}: required string")
        prefetch = service.get("prefetch")
        if prefetch is not None and not (isinstance(prefetch, dict)
                                         and all(isinstance(v, str) for v in prefetch.values())):
            problems.append(f"{path}.prefetch: must map keys to query strings")
        if "extension" in service and not isinstance(service["extension"], dict):
            problems.append(f"{path}.extension: must be an object")
    return problems
