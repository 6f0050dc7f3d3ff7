"""Domain types shared by the clinical stages: findings, report facts and the hook result.

Small frozen dataclasses built by pure functions; nothing here knows about Flask or HTTP.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

Certainty = Literal["affirmed", "negated", "uncertain"]
Laterality = Literal["left", "right", "bilateral", "unilateral"]
Severity = Literal["mild", "moderate", "severe"]
SourceKind = Literal["coded", "text"]


@dataclass(frozen=True)
class Evidence:
    """Where a finding came from, so a card can show it.

    `reference` is the FHIR relative reference of the resource (e.g. ``DiagnosticReport/abc``);
    `kind` says whether a code or a sentence produced the finding; `text` is the sentence (text findings)
    or the code's display (coded findings). Card rendering must escape `text` before putting it in Markdown.
    """

    reference: str
    kind: SourceKind
    text: str | None = None
    code: str | None = None          # "system|code" for coded findings
    element: str | None = None       # e.g. "conclusionCode", "Condition.code", "conclusion", "presentedForm[0]"


@dataclass(frozen=True)
class Finding:
    """One normalized clinical finding, e.g. SI-joint synovitis, left, mild, affirmed.

    `concept` is a concept id from ``hooks/knowledge/concepts.yaml``. A negated finding is kept (the
    pathways need "no erosions" as much as "erosions").
    """

    concept: str
    certainty: Certainty
    source: Evidence
    historical: bool = False
    laterality: Laterality | None = None
    severity: Severity | None = None
    site: str | None = None                      # site id: si_joint, hip, femoral_head, labrum, vertebra, foot ...
    depth_mm: float | None = None                # edema depth from the articular surface, when measured
    measurements: Mapping[str, float] = field(default_factory=dict)   # other numbers (alpha_angle_deg, height_loss_pct)
    section: str | None = None                   # report section role: findings, impression, addendum, reason ...
    study_date: str | None = None                # the date of the report's study (ISO), when known

    @property
    def active(self) -> bool:
        """Affirmed and current: what a pathway may act on."""
        return self.certainty == "affirmed" and not self.historical


@dataclass(frozen=True)
class ReportFacts:
    """What the pathways need to know about one imaging report besides its findings."""

    reference: str                               # DiagnosticReport/abc
    modality: str | None                         # "MR", "XR", "CT", "US", "NM" or None when unknown
    region: str | None                           # "sacroiliac", "pelvis", "hip", "lumbar_spine", "foot" ...
    loinc: str | None                            # the report's LOINC code, when coded
    t1_sequence: bool = False                    # a T1-weighted sequence is mentioned
    fluid_sensitive_sequence: bool = False       # STIR or T2 (fat-suppressed) is mentioned
    issued: str | None = None                    # effectiveDateTime or issued, ISO string
    status: str | None = None                    # final, amended, preliminary ... (DocumentReference: docStatus)
    unread_attachments: tuple[str, ...] = ()     # attachments not read: their media type (PDF, image) or "url-only"
    readable: bool = True                        # some text or coded conclusion could be read (else it says nothing)


@dataclass(frozen=True)
class FindingSet:
    """All findings of a patient's record plus the facts of each imaging report."""

    findings: tuple[Finding, ...] = ()
    reports: tuple[ReportFacts, ...] = ()

    def active(self, concept: str) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.concept == concept and f.active)

    def negated(self, concept: str) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.concept == concept and f.certainty == "negated")

    def uncertain(self, concept: str) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.concept == concept and f.certainty == "uncertain")


@dataclass(frozen=True)
class HookResult:
    """What a CDS service handler returns: card JSON objects and optional system actions (CDS Hooks 2.0)."""

    cards: tuple[Mapping[str, Any], ...] = ()
    system_actions: tuple[Mapping[str, Any], ...] = ()


# ------------------------------------------------------------------------------------------------------- cards
@dataclass(frozen=True)
class Action:
    """One CDS Hooks action of a suggestion: create a resource or delete a draft (by relative reference)."""

    type: Literal["create", "update", "delete"]
    description: str
    resource: Mapping[str, Any] | None = None
    resource_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "description": self.description}
        if self.resource is not None:
            out["resource"] = dict(self.resource)
        if self.resource_id:
            out["resourceId"] = self.resource_id
        return out


@dataclass(frozen=True)
class Suggestion:
    """A one-click suggestion: its actions are applied together, so they hold only orders that belong together."""

    label: str
    uuid: str
    actions: tuple[Action, ...]
    is_recommended: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "uuid": self.uuid}
        if self.is_recommended:
            out["isRecommended"] = True
        out["actions"] = [a.to_json() for a in self.actions]
        return out


@dataclass(frozen=True)
class Link:
    label: str
    url: str
    type: Literal["absolute", "smart"] = "absolute"

    def to_json(self) -> dict[str, str]:
        return {"label": self.label, "url": self.url, "type": self.type}


@dataclass(frozen=True)
class CardSource:
    label: str
    url: str | None = None
    topic: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label}
        if self.url:
            out["url"] = self.url
        if self.topic:
            out["topic"] = dict(self.topic)
        return out


@dataclass(frozen=True)
class Card:
    """One CDS Hooks 2.0 card as the renderer builds it; `to_json` leaves out every empty optional field."""

    uuid: str
    summary: str
    indicator: Literal["info", "warning", "critical"]
    detail: str
    source: CardSource
    extension: Mapping[str, Any]
    suggestions: tuple[Suggestion, ...] = ()
    selection_behavior: Literal["at-most-one", "any"] | None = None
    override_reasons: tuple[Mapping[str, str], ...] = ()
    links: tuple[Link, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uuid": self.uuid, "summary": self.summary, "indicator": self.indicator}
        if self.detail:
            out["detail"] = self.detail
        out["source"] = self.source.to_json()
        out["extension"] = dict(self.extension)
        if self.suggestions:
            out["suggestions"] = [s.to_json() for s in self.suggestions]
            out["selectionBehavior"] = self.selection_behavior or "at-most-one"
        if self.override_reasons:
            out["overrideReasons"] = [dict(r) for r in self.override_reasons]
        if self.links:
            out["links"] = [link.to_json() for link in self.links]
        return out
