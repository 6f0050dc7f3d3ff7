"""CDS service declarations: each service states its contract (id, hook, title, description, prefetch) right on
its handler; a `ServiceRegistry` collects them and is handed to `service.create_app`, which builds discovery and
routes from it. Adding a service touches `hooks/` only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping

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


class ServiceRegistry:
    """The CDS services one app serves, in declaration order; handed to `service.create_app` (nothing is registered
    by the side effect of an import, so tests can build apps with their own services)."""

    def __init__(self, definitions: Iterable[CdsServiceDefinition] = ()) -> None:
        self._services: dict[str, CdsServiceDefinition] = {}
        for definition in definitions:
            self.register(definition)

    def register(self, definition: CdsServiceDefinition) -> None:
        if definition.id in self._services:
            raise ValueError(f"duplicate CDS service id {definition.id!r}")
        self._services[definition.id] = definition

    def get(self, service_id: str) -> CdsServiceDefinition | None:
        return self._services.get(service_id)

    def __contains__(self, service_id: object) -> bool:
        return service_id in self._services

    def __getitem__(self, service_id: str) -> CdsServiceDefinition:
        return self._services[service_id]

    def __iter__(self) -> Iterator[CdsServiceDefinition]:
        return iter(self._services.values())

    def __len__(self) -> int:
        return len(self._services)

    def keys(self) -> list[str]:
        return list(self._services)

    def values(self) -> list[CdsServiceDefinition]:
        return list(self._services.values())


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
    """Declare a CDS service's contract on its handler (`handler.cds_service`); a ServiceRegistry collects them."""

    unknown = set(required_prefetch) - set(prefetch)
    if unknown:
        raise ValueError(f"service {id}: required prefetch keys {sorted(unknown)} are not declared")

    def declare(handler: Handler) -> Handler:
        handler.cds_service = CdsServiceDefinition(  # type: ignore[attr-defined]
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

    return declare
