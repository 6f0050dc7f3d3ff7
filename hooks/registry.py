"""CDS service declarations: each service states its contract (id, hook, title, description, prefetch) right on
its handler, and `service/` builds discovery and routes from this registry. Adding a service touches `hooks/` only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping

from hooks.model import HookResult
from hooks.record import PatientRecord


@dataclass(frozen=True)
class HookRequest:
    """A validated CDS Hooks request with its data resolved: what a handler receives."""

    service_id: str
    hook: str
    hook_instance: str
    context: Mapping[str, Any]
    record: PatientRecord
    now: datetime                               # the evaluation time (timezone-aware); fixed in tests
    fhir_server: str | None = None

    @property
    def patient_id(self) -> str | None:
        value = self.context.get("patientId")
        return value if isinstance(value, str) else None

    @property
    def user_reference(self) -> str | None:
        """`context.userId` (e.g. ``Practitioner/123``) when present."""
        value = self.context.get("userId")
        return value if isinstance(value, str) else None


Handler = Callable[[HookRequest], HookResult]


@dataclass(frozen=True)
class CdsServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    prefetch: Mapping[str, str]
    handler: Handler
    #: prefetch keys without which the service cannot work: unobtainable -> 412 Precondition Failed
    required_prefetch: frozenset[str] = field(default_factory=frozenset)
    usage_requirements: str | None = None

    def discovery_entry(self, extension: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The service's object in the discovery response (no empty or null values, per CDS Hooks 2.0)."""
        entry: dict[str, Any] = {
            "hook": self.hook,
            "title": self.title,
            "description": self.description,
            "id": self.id,
        }
        if self.prefetch:
            entry["prefetch"] = dict(self.prefetch)
        if self.usage_requirements:
            entry["usageRequirements"] = self.usage_requirements
        if extension:
            entry["extension"] = dict(extension)
        return entry


_REGISTRY: dict[str, CdsServiceDefinition] = {}


def cds_service(
    *,
    id: str,
    hook: str,
    title: str,
    description: str,
    prefetch: Mapping[str, str],
    required_prefetch: tuple[str, ...] = (),
    usage_requirements: str | None = None,
) -> Callable[[Handler], Handler]:
    """Declare a CDS service on its handler function."""

    unknown = set(required_prefetch) - set(prefetch)
    if unknown:
        raise ValueError(f"service {id}: required prefetch keys {sorted(unknown)} are not declared")

    def register(handler: Handler) -> Handler:
        if id in _REGISTRY:
            raise ValueError(f"duplicate CDS service id {id!r}")
        _REGISTRY[id] = CdsServiceDefinition(
            id=id,
            hook=hook,
            title=title,
            description=description,
            prefetch=dict(prefetch),
            handler=handler,
            required_prefetch=frozenset(required_prefetch),
            usage_requirements=usage_requirements,
        )
        return handler

    return register


def registered_services() -> Mapping[str, CdsServiceDefinition]:
    """All declared services, in declaration order. Importing `hooks.services` fills the registry."""
    import hooks.services  # noqa: F401  (declarations register on import)

    return dict(_REGISTRY)
