"""Prefetch template rendering (CDS Hooks 2.0): `{{context.<root primitive field>}}` and the user tokens
userPractitionerId, userPractitionerRoleId, userPatientId, userRelatedPersonId derived from context.userId."""
from __future__ import annotations

import re
from typing import Any, Mapping
from urllib.parse import quote

TOKEN = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")

USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


class TemplateError(ValueError):
    """A template names a token this request cannot fill (the key is then unobtainable, not an error)."""


def token_values(context: Mapping[str, Any]) -> dict[str, str]:
    """Every value a template may use for this context."""
    values: dict[str, str] = {}
    for name, value in context.items():
        if isinstance(value, bool):
            values[f"context.{name}"] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            values[f"context.{name}"] = str(value)
    user_id = context.get("userId")
    if isinstance(user_id, str) and "/" in user_id:
        user_type, _, user_value = user_id.rpartition("/")
        user_type = user_type.rsplit("/", 1)[-1]
        for token, resource_type in USER_TOKENS.items():
            if user_type == resource_type and user_value:
                values[token] = user_value
    return values


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill the tokens of one template; values are percent-encoded so they cannot change the query's shape."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise TemplateError(name)
        return quote(values[name], safe="")

    return TOKEN.sub(fill, template)
