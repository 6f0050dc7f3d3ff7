"""Report structure: a report text -> its sections (medspaCy Sectionizer over the heading rules of
knowledge/report_structure.yaml), each with the role that says what a mention in it means for the patient today."""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from hooks.knowledge import Coding, StrictModel, load_model

STRUCTURE_FILE = "report_structure.yaml"
MAX_SECTIONS = 64               # bound on the work one report text can ask of us

Reading = Literal["current", "historical", "drop"]


class Role(StrictModel):
    affirmed: Reading
    uncertain: Reading
    negated: Reading
    rank: int


class Currency(StrictModel):
    deciding_statuses: tuple[str, ...]
    max_report_age_days: int


class Preamble(StrictModel):
    with_findings_heading: str
    otherwise: str


class DocumentKinds(StrictModel):
    types: tuple[Coding, ...]
    categories: tuple[Coding, ...]

    def codes(self) -> frozenset[tuple[str, str]]:
        return frozenset((c.system, c.code) for c in (*self.types, *self.categories))


class ReportStructure(StrictModel):
    roles: dict[str, Role]
    headings: dict[str, tuple[str, ...]]
    preamble: Preamble
    currency: Currency
    document_references: DocumentKinds

    def model_post_init(self, _context: Any) -> None:
        needed = {"headingless", "headingless_conclusion", self.preamble.with_findings_heading,
                  self.preamble.otherwise, *self.headings}
        unknown = sorted(needed - set(self.roles))
        if unknown:
            raise ValueError(f"roles not defined: {', '.join(unknown)}")


@lru_cache(maxsize=1)
def report_structure() -> ReportStructure:
    return load_model(STRUCTURE_FILE, ReportStructure)


@dataclass(frozen=True)
class Section:
    role: str
    start: int          # character offsets of the section body in the report text (heading excluded)
    end: int


# A heading ends with ":" or " - " (an optional number first: "Addendum 1:", "ADDENDUM #2 -").
# "HISTORY/INDICATION:", "Findings & impression:": a second heading word joined by "/" or "&" belongs to the heading.
# A note in brackets may stand before the colon: "PRELIMINARY REPORT (resident, 11/28 22:10):", "IMPRESSION (final):".
_AFTER_HEADING = re.compile(r"(?:[ \t]*[/&][ \t]*[A-Za-z]+(?:[ \t][A-Za-z]+)?)?[ \t]*(?:#?\d{1,2}[ \t]*)?"
                            r"(?:\([^()\n]{0,80}\)[ \t]*)?(?::|-(?=\s)|–(?=\s))")
_LINE_PREFIX = re.compile(r"[ \t#*>\-•]*$")         # what may stand before a heading on its line (markup, bullets)
_SENTENCE_END = re.compile(r"[.!?;:)\]][ \t]*$")     # "...normal. Impression: ..." (not "these findings: ...")
_REST_OF_LINE = re.compile(r"[ \t]*(?:#?\d{1,2})?[ \t]*(?:\r?\n|$)")


def _sectionizer_class() -> type:
    from medspacy.section_detection import Sectionizer

    class HeadingSectionizer(Sectionizer):
        """medspaCy's Sectionizer with the radiology heading test: a heading is followed by a colon, or starts a
        line and is alone on it or written in capitals. Heading words inside a sentence are no headings."""

        def filter_start_lines(self, doc: Any, matches: list) -> list:
            text = doc.text
            kept = []
            for match in matches:
                start, end = match[1], match[2]
                begin = doc[start].idx
                finish = doc[end - 1].idx + len(doc[end - 1])
                line_start = text.rfind("\n", 0, begin) + 1
                at_line_start = bool(_LINE_PREFIX.match(text, line_start, begin)) if begin > line_start else True
                if _AFTER_HEADING.match(text, finish) and (at_line_start or _SENTENCE_END.search(text, 0, begin)):
                    kept.append(match)
                elif at_line_start and (_REST_OF_LINE.match(text, finish)
                                        or (text[begin:finish].isupper() and not _rest_is_upper(text, finish))):
                    kept.append(match)
            return kept

    return HeadingSectionizer


def _rest_is_upper(text: str, pos: int) -> bool:
    """An all-capitals line ("FINDINGS ARE STABLE") is a report written in capitals, not a heading with text."""
    end = text.find("\n", pos)
    rest = text[pos:end if end >= 0 else len(text)]
    letters = [c for c in rest if c.isalpha()]
    return bool(letters) and all(c.isupper() for c in letters)


class _Splitter:
    def __init__(self, structure: ReportStructure) -> None:
        import spacy
        from medspacy.section_detection import SectionRule

        self.nlp = spacy.blank("en")
        self.sectionizer = _sectionizer_class()(self.nlp, rules=None, span_attrs=None, require_start_line=True,
                                                phrase_matcher_attr="LOWER")
        rules = []
        for role, literals in structure.headings.items():
            for literal in literals:
                # One token pattern: spaCy warns (W036) on every call of an empty token matcher.
                pattern = [{"LOWER": literal}] if literal == "addendum" else None
                rules.append(SectionRule(literal=literal, category=role, pattern=pattern))
        self.sectionizer.add(rules)
        words = sorted({w for literals in structure.headings.values() for w in literals}, key=len, reverse=True)
        # A cheap test first: most texts (a one-line conclusion) contain no heading word at all.
        self.prefilter = re.compile(r"(?<![\w])(?:" + "|".join(re.escape(w) for w in words) + r")(?![\w])",
                                    re.IGNORECASE)
        self.lock = threading.Lock()

    def split(self, text: str, default_role: str, structure: ReportStructure) -> tuple[Section, ...]:
        if not self.prefilter.search(text):
            return (Section(default_role, 0, len(text)),)
        with self.lock:
            doc = self.sectionizer(self.nlp.make_doc(text))
            found = [(s.category, s.body_start, s.body_end) for s in doc._.sections]
            tokens = [(t.idx, t.idx + len(t)) for t in doc]
        if all(category is None for category, _, _ in found):
            return (Section(default_role, 0, len(text)),)
        has_findings = any(c == "findings" for c, _, _ in found)
        preamble = structure.preamble.with_findings_heading if has_findings else structure.preamble.otherwise
        sections: list[Section] = []
        for category, body_start, body_end in found[:MAX_SECTIONS]:
            start = tokens[body_start][0] if body_start < len(tokens) else len(text)
            end = tokens[body_end - 1][1] if 0 < body_end <= len(tokens) and body_end > body_start else start
            if category is not None:
                heading_end = _AFTER_HEADING.match(text, start)
                if heading_end:
                    start = heading_end.end()
            if end > start and text[start:end].strip():
                role = category
                if role is None:
                    # One line without a full stop before the first heading is a title ("MRI SI JOINTS"), whatever
                    # follows; longer prose there is the findings, written before an "IMPRESSION:".
                    body = text[start:end].strip()
                    role = (structure.preamble.with_findings_heading if "\n" not in body and "." not in body
                            else preamble)
                sections.append(Section(role, start, end))
        return tuple(sections) or (Section(default_role, 0, len(text)),)


@lru_cache(maxsize=1)
def _splitter() -> _Splitter:
    return _Splitter(report_structure())


def split_sections(text: str, default_role: str = "headingless") -> tuple[Section, ...]:
    """The sections of a report text in order; a text without headings is one section of `default_role`."""
    structure = report_structure()
    return _splitter().split(text, default_role, structure)


def reading(role: str, certainty: str) -> Reading:
    """What a mention of this certainty in a section of this role is: current, historical or dropped."""
    known = report_structure().roles.get(role)
    if known is None:
        return "current"
    return getattr(known, certainty)


def rank(role: str | None) -> int:
    known = report_structure().roles.get(role or "")
    return known.rank if known is not None else 1
