"""Loads the versioned clinical knowledge files in this folder into typed (pydantic) models.

A bad file stops start-up with a `KnowledgeError` naming the file, the place in it and the reason.
Clinical content lives only in the data files; Python holds the engines that read them.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

KNOWLEDGE_DIR = Path(__file__).resolve().parent

T = TypeVar("T", bound=BaseModel)


class KnowledgeError(RuntimeError):
    """A knowledge file is missing, unreadable or invalid."""

    def __init__(self, file: str, place: str, reason: str) -> None:
        super().__init__(f"{file}: {place}: {reason}")
        self.file, self.place, self.reason = file, place, reason


class StrictModel(BaseModel):
    """Base for knowledge models: unknown keys are errors (a typo must not silently drop a rule)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


SYSTEMS = {
    "snomed": "http://snomed.info/sct",
    "icd10cm": "http://hl7.org/fhir/sid/icd-10-cm",
    "loinc": "http://loinc.org",
    "rxnorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
}


class Coding(StrictModel):
    """A code with its verification status from ../shared/reference (never shipped as verified unless it is)."""

    system: str                       # a URI, or one of the short names in SYSTEMS
    code: str
    display: str
    verified: bool                    # True only when the reference marks it verified (one or more sources)
    note: str | None = None           # e.g. "closest concept", "local code", "✔✔ codes-verified.md"

    @model_validator(mode="after")
    def _expand_system(self) -> "Coding":
        if self.system in SYSTEMS:
            object.__setattr__(self, "system", SYSTEMS[self.system])
        elif not self.system.startswith(("http://", "https://", "urn:")):
            raise ValueError(f"system {self.system!r} is neither a URI nor one of {sorted(SYSTEMS)}")
        return self

    def fhir(self) -> dict[str, str]:
        """The FHIR Coding JSON (system, code, display)."""
        return {"system": self.system, "code": self.code, "display": self.display}


def _place(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


# libyaml's C parser when PyYAML has it: the same documents, about 10x faster to load at start-up.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@lru_cache(maxsize=None)
def load_yaml(name: str) -> Any:
    """The parsed content of one knowledge file (cached; files are read once per process)."""
    path = KNOWLEDGE_DIR / name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KnowledgeError(name, "(file)", f"cannot read: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506  (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(parse)"
        raise KnowledgeError(name, where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None


def load_model(name: str, model: type[T]) -> T:
    """Load a knowledge file and validate it as `model`, turning errors into a `KnowledgeError`."""
    data = load_yaml(name)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise KnowledgeError(name, _place(first["loc"]), first["msg"] + more) from None


class Manifest(StrictModel):
    version: str
    released: str
    description: str
    files: list[str]
    content_digest: str      # sha256 of the other files at this version; a test fails when they change without it


def knowledge_digest(files: list[str]) -> str:
    """sha256 over the knowledge files (name and bytes, manifest.yaml itself excluded), in the manifest's order."""
    digest = hashlib.sha256()
    for name in files:
        if name != "manifest.yaml":
            digest.update(name.encode() + b"\0" + (KNOWLEDGE_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()


def manifest() -> Manifest:
    return load_model("manifest.yaml", Manifest)


def knowledge_version() -> str:
    """The knowledge version shown in discovery and in every card."""
    return manifest().version


class ObservationCode(StrictModel):
    id: str
    purpose: str
    codings: list[Coding]
    unit: str | None = None


class ObservationCatalogue(StrictModel):
    observations: list[ObservationCode]

    def codes(self) -> list[Coding]:
        return [c for o in self.observations for c in o.codings]

    def by_id(self, id_: str) -> ObservationCode:
        for o in self.observations:
            if o.id == id_:
                return o
        raise KeyError(id_)


def observation_catalogue() -> ObservationCatalogue:
    return load_model("observations.yaml", ObservationCatalogue)


