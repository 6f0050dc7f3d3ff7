"""Report-text NLP: finding phrasings (from the catalogue) found in a blank spaCy pipeline, medspaCy ConText for
negation, uncertainty, history and hypotheticals, then laterality, severity, site and measurements from the same
sentence. All phrasings and modifiers are data (hooks/knowledge); this module holds only the engine."""
from __future__ import annotations

import bisect
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from hooks.findings.catalogue import Compiled, compiled
from hooks.findings.dispatch import Prefiltered
from hooks.model import Evidence, Finding

LESS_THAN = frozenset({"<", "<=", "≤", "less than", "under"})
NEGATING = frozenset({"NEGATED_EXISTENCE", "RESOLVED"})
SEVERITY_AFTER_PENALTY = 12     # chars: "mild synovitis" is the usual order, "synovitis is mild" the rarer one
MAX_PRIMED = 100_000            # distinct words put into spaCy's tokenizer cache (bounded; later words are not)
MAX_GAP = {"laterality": 60, "severity": 30, "site": 60, "measurement": 80, "deep": 40}


_NO_CATEGORIES: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Target:
    concept: str | None          # None for a decoy (claims the words, produces nothing)
    start: int
    end: int
    certainty: str | None
    also: tuple[str, ...]
    order: int
    affirm_only: bool = False
    needs_site: bool = False


@dataclass(frozen=True)
class _Mention:
    kind: str
    value: Any
    start: int
    end: int
    extra: Any = None


class _Pipeline:
    """A blank English spaCy pipeline with a sentencizer and a ConText component built from our rules."""

    def __init__(self, rules: Compiled) -> None:
        import spacy
        from medspacy.context import ConText, ConTextRule

        self.nlp = spacy.blank("en")
        self.sentencizer = self.nlp.add_pipe("sentencizer")
        self.context = ConText(self.nlp, rules=None, span_attrs=None)
        for group in rules.context.rules:
            # Literals go to medspaCy's phrase matcher (lower-case). The bare negation cue "no" is the one token
            # pattern: spaCy warns (W036) on every call of an empty token matcher, and one short pattern is cheap.
            self.context.add([
                ConTextRule(literal, group.category, direction=group.direction, max_scope=group.max_scope,
                            pattern=[{"LOWER": "no"}] if literal == "no" else None)
                for literal in group.literals
            ])
        self.line_breaks = rules.line_breaks
        self.primed: set[str] = set()
        # ConText/spaCy objects are not documented as thread-safe; gunicorn threads share this pipeline.
        self.lock = threading.Lock()

    def prime(self, text: str) -> None:
        """Put the text's words into spaCy's tokenizer cache. spaCy caches a word's tokens only while no special
        case has been met earlier in the same text (its flag is per text), so in a report most words after the first
        special case are split with the affix rules on every call. Tokenizing each new word once on its own caches
        it (a word that involves a special case still is not cached); the cache only memoises per-word results,
        so the tokens are the same."""
        primed = self.primed
        tokenizer = self.nlp.tokenizer
        for word in text.split():
            if word not in primed and len(primed) < MAX_PRIMED:
                primed.add(word)
                tokenizer(word)

    def doc(self, text: str, targets: list[_Target]) -> Any:
        self.prime(text)
        doc = self.nlp.make_doc(text)
        doc = self.sentencizer(doc)
        if "?" in text:            # "?AVN ?stress fracture": a question mark glued to a word asks about it, no sentence end
            for token in doc[:-1]:
                if token.text == "?" and not token.whitespace_ and doc[token.i + 1].is_alpha:
                    doc[token.i + 1].is_sent_start = False
        if "\n" in text:           # some line breaks end a sentence (headings, lists); wrapped lines do not
            for found in self.line_breaks.finditer(text):
                pos = found.end()
                while pos < len(text) and text[pos].isspace():
                    pos += 1
                span = doc.char_span(pos, len(text), alignment_mode="expand") if pos < len(text) else None
                if span is not None and span.start > 0:
                    doc[span.start].is_sent_start = True
        spans = []
        last_token = -1
        for target in targets:
            if target.concept is None:
                continue
            span = doc.char_span(target.start, target.end, label=target.concept, alignment_mode="expand")
            if span is None or span.start <= last_token:
                continue
            spans.append(span)
            last_token = span.end - 1
        doc.ents = spans
        return self.context(doc)


@lru_cache(maxsize=1)
def pipeline() -> _Pipeline:
    return _Pipeline(compiled())


def _group_order(payload: tuple[int, Any]) -> int:
    return payload[0]


def _find_targets(text: str, rules: Compiled) -> list[_Target]:
    """Phrasing and decoy matches, overlaps resolved longest first (a decoy or a longer phrase wins)."""
    candidates: list[_Target] = []
    for start, end, (order, member) in rules.targets.matches(text, group_of=_group_order):
        candidates.append(_Target(member.concept, start, end, member.certainty, member.also, order,
                                  member.affirm_only, member.needs_site))
    candidates.sort(key=lambda t: (-(t.end - t.start), t.order, t.start))
    taken: list[_Target] = []
    for cand in candidates:
        if all(cand.end <= t.start or cand.start >= t.end for t in taken):
            taken.append(cand)
    taken.sort(key=lambda t: t.start)
    return taken


def _modifier_mentions(text: str, rules: Compiled) -> dict[str, list[_Mention]]:
    """Laterality, severity and site words of a sentence (one pass); overlaps within a kind: the longest wins."""
    found: dict[str, list[_Mention]] = {"laterality": [], "severity": [], "site": []}
    for start, end, (kind, value) in rules.modifiers.matches(text, group_of=_kind):
        found[kind].append(_Mention(kind, value, start, end))
    for kind, mentions in found.items():
        mentions.sort(key=lambda x: (-(x.end - x.start), x.start))
        kept: list[_Mention] = []
        for cand in mentions:
            if all(cand.end <= k.start or cand.start >= k.end for k in kept):
                kept.append(cand)
        found[kind] = kept
    return found


def _kind(payload: tuple[str, str]) -> str:
    return payload[0]


def _gap(mention: _Mention, start: int, end: int) -> int:
    if mention.end <= start:
        return start - mention.end
    if mention.start >= end:
        return mention.start - end
    return 0


def _clause_of(position: int, breaks: list[int]) -> int:
    return bisect.bisect_right(breaks, position) if breaks else 0       # breaks are in order


def _assign(mentions: list[_Mention], targets: list[tuple[int, int, int, str]], breaks: list[int],
            allowed: frozenset[str] | None = None) -> dict[int, _Mention]:
    """Pair mentions with findings of the same clause, closest pairs first, one mention per finding.

    A modifier usually precedes its noun ("left SI joint synovitis"), so at equal distance the finding after the
    mention wins; severity words after the finding ("effusion, moderate") pay a further penalty."""
    if not mentions:
        return {}
    pairs: list[tuple[float, int, int]] = []
    clauses = [_clause_of(start, breaks) for _, start, _, _ in targets]
    for m_index, mention in enumerate(mentions):
        clause = _clause_of(mention.start, breaks)
        for (index, start, end, concept), target_clause in zip(targets, clauses):
            if allowed is not None and concept not in allowed:
                continue
            if target_clause != clause:
                continue
            cost: float = _gap(mention, start, end)
            if mention.start >= end:
                cost += SEVERITY_AFTER_PENALTY if mention.kind == "severity" else 0.5
            if cost > MAX_GAP[mention.kind]:
                continue
            pairs.append((cost, m_index, index))
    pairs.sort()
    used_mentions: set[int] = set()
    out: dict[int, _Mention] = {}
    for _, m_index, index in pairs:
        if m_index in used_mentions or index in out:
            continue
        used_mentions.add(m_index)
        out[index] = mentions[m_index]
    return out


@lru_cache(maxsize=64)
def _prefiltered(regex: Any) -> Prefiltered:
    """The regex behind a cheap test for the texts it requires (most sentences name no measurement)."""
    return Prefiltered(regex)


def _measure(text: str, rules: Compiled) -> list[_Mention]:
    out: list[_Mention] = []
    for rule, regex in rules.measurements:
        for m in _prefiltered(regex).finditer(text):
            groups = m.groupdict()
            raw = groups.get("value") or groups.get("value2")
            if raw is None:
                continue
            value = float(raw)
            unit = groups.get("unit")
            if unit and rule.units:
                value *= rule.units.get(unit.lower(), 1.0)
            comparator = (groups.get("cmp") or "").strip().lower()
            out.append(_Mention("measurement", value, m.start(), m.end(), (rule, comparator)))
    return out


def _is_deep(depth: float | None, comparator: str, rules: Compiled) -> bool:
    if depth is None or comparator in LESS_THAN:
        return False
    threshold = rules.nlp.deep_bme
    if comparator in {">", "greater than", "more than", "over"}:
        return depth >= threshold.threshold_mm
    return depth >= threshold.threshold_mm if threshold.inclusive else depth > threshold.threshold_mm


def _clean(sentence: str, limit: int) -> str:
    text = " ".join(sentence.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _sentence_findings(text: str, offset: int, ents: list[Any], reference: str, element: str | None,
                       rules: Compiled, targets: list[_Target], target_info: dict[tuple[int, int], _Target],
                       categories_of: dict[tuple[int, int], set[str]], region: str | None = None) -> list[Finding]:
    """The findings of one sentence (`text`, starting at `offset` in the report text) from its entities; `region`
    is the report's region (ReportFacts.region), None when not known."""
    catalogue = rules.by_id
    breaks = [m.start() for m in _prefiltered(rules.clause_breaks).finditer(text)]
    located = [(i, e.start_char - offset, e.end_char - offset, e.label_) for i, e in enumerate(ents)]
    mentions = _modifier_mentions(text, rules)
    lateralities = mentions["laterality"]
    if rules.laterality_comparatives is not None and any(m.value == "bilateral" for m in lateralities):
        # "bilateral erosions, more marked on the right": the side compares, the finding stays bilateral
        lateralities = [m for m in lateralities if m.value == "bilateral"
                        or not rules.laterality_comparatives.search(text[max(0, m.start - 40):m.start])]
    sides = {m.value for m in lateralities} & {"left", "right"}
    if len(sides) == 1:         # "unilateral sacroiliitis, left-sided": the side says more
        side = next(iter(sides))
        lateralities = [replace(m, value=side) if m.value == "unilateral" else m for m in lateralities]
    severities = [m for m in mentions["severity"]
                  if not rules.severity_comparatives.search(text[max(0, m.start - 20):m.start])]
    sites = mentions["site"]
    measures = _measure(text, rules)
    # "4 mm deep" is a measurement, not the word "deep": only a free-standing "deep" counts.
    deep_words = [_Mention("deep", True, m.start(), m.end()) for m in _prefiltered(rules.deep_phrase).finditer(text)
                  if not any(0 <= m.start() - x.end <= 1 for x in measures)]

    own_lat = _assign(lateralities, located, breaks)
    own_sev = _assign(severities, located, breaks)
    own_site = _assign(sites, located, breaks)
    by_measure: dict[str, dict[int, _Mention]] = {}
    for rule, _ in rules.measurements:
        numbers = [m for m in measures if m.extra[0].name == rule.name]
        by_measure[rule.name] = _assign(numbers, located, breaks, frozenset(rule.applies_to)) if numbers else {}
    deep_applies = frozenset(rules.nlp.deep_bme.applies_to)
    own_deep = _assign(deep_words, located, breaks, deep_applies)
    lat_values = {m.value for m in lateralities}
    site_values = {m.value for m in sites}
    sentence_lat = next(iter(lat_values)) if len(lat_values) == 1 else None
    sentence_site = next(iter(site_values)) if len(site_values) == 1 else None
    evidence = Evidence(reference=reference, kind="text", text=_clean(text, rules.nlp.limits.max_evidence_chars),
                        element=element)

    out: list[Finding] = []
    for index, ent in enumerate(ents):
        target = target_info.get((ent.start_char, ent.end_char))
        categories = categories_of.get((ent.start, ent.end), _NO_CATEGORIES)
        fixed = target.certainty if target is not None else None
        if fixed is None:
            for t in targets:      # the span may have been widened to whole tokens
                if t.concept == ent.label_ and ent.start_char <= t.start < ent.end_char:
                    fixed, target = t.certainty, t
                    break
        if fixed is None and "HYPOTHETICAL" in categories and not categories & NEGATING:
            continue        # asked about, not found: not a finding
        if target is not None and target.affirm_only and (fixed == "negated" or (fixed is None
                                                                                   and categories & NEGATING)):
            continue        # "no subchondral collapse" does not exclude osteonecrosis
        if fixed is not None:
            certainty = fixed
        elif categories & NEGATING:
            certainty = "negated"
        elif "POSSIBLE_EXISTENCE" in categories:
            certainty = "uncertain"
        else:
            certainty = "affirmed"
        # "previously seen oedema persists": known before and still there is a current finding
        historical = "HISTORICAL" in categories and "ONGOING" not in categories and certainty != "negated"
        concept = catalogue[ent.label_]
        placed = own_site[index].value if index in own_site else (None if concept.site_in_name else sentence_site)
        if concept.sites and placed is not None and placed not in concept.sites:
            continue        # e.g. "synovitis of the hip" is not SI-joint synovitis
        if (placed is None and concept.default_site_regions and region not in concept.default_site_regions
                and not (concept.id in rules.default_site_words
                         and rules.default_site_words[concept.id].search(text))):
            continue        # "synovitis" with no site in a wrist MRI (or a report of unknown region) is not SI-joint
        if target is not None and target.needs_site and placed not in concept.sites:
            continue        # "calcific density" names labral calcification only at the labrum
        laterality = own_lat[index].value if index in own_lat else sentence_lat
        severity = own_sev[index].value if index in own_sev else None
        site = placed or concept.default_site
        measurements: dict[str, float] = {}
        depth: float | None = None
        comparator = ""
        for name, assigned in by_measure.items():
            if index in assigned:
                if name == "depth_mm":
                    depth, comparator = assigned[index].value, assigned[index].extra[1]
                    if comparator in LESS_THAN:
                        depth = None        # "< 1 cm" says shallow, not how deep
                else:
                    measurements[name] = assigned[index].value
        base = dict(certainty=certainty, source=evidence, historical=historical, laterality=laterality,
                    severity=severity, site=site, depth_mm=depth, measurements=measurements)
        concepts = [concept.id, *(target.also if target is not None else ())]
        if certainty != "negated":
            concepts.extend(concept.implies)
            # A measured depth decides; the word "deep" only when no number was given.
            measured = depth is not None or comparator in LESS_THAN
            if concept.id in deep_applies and (_is_deep(depth, comparator, rules) if measured else index in own_deep):
                concepts.append(rules.nlp.deep_bme.adds)
        for concept_id in dict.fromkeys(concepts):
            _merge(out, Finding(concept=concept_id, **base))
    return out


def _merge(out: list[Finding], finding: Finding) -> None:
    """Mentions of one concept in one sentence that agree become one finding (a later mention fills gaps); an
    affirmed mention outweighs an uncertain one ("cam deformity which may predispose to FAI")."""
    fields = ("laterality", "severity", "site", "depth_mm")
    for n, seen in enumerate(out):
        if (seen.concept, seen.historical) != (finding.concept, finding.historical):
            continue
        if any(getattr(seen, f) is not None and getattr(finding, f) is not None
               and getattr(seen, f) != getattr(finding, f) for f in fields
               if not (f == "laterality" and "bilateral" in (seen.laterality, finding.laterality))):
            continue        # a second site or side: a second finding (a "bilateral" mention covers one side)
        if {seen.certainty, finding.certainty} == {"affirmed", "uncertain"}:
            keep, other = (seen, finding) if seen.certainty == "affirmed" else (finding, seen)
        elif seen.certainty == finding.certainty:
            keep, other = seen, finding
        else:
            continue
        out[n] = replace(keep, **{f: getattr(keep, f) if getattr(keep, f) is not None else getattr(other, f)
                                  for f in fields},
                         measurements={**other.measurements, **keep.measurements})
        return
    out.append(finding)


class _TextCache:
    """Bounded LRU of extraction results keyed by (reference, element, region, text digest). Thread-safe."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: OrderedDict[tuple[str, str | None, str | None, bytes], tuple[Finding, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get(self, key: tuple[str, str | None, str | None, bytes]) -> tuple[Finding, ...] | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: tuple[str, str | None, str | None, bytes], value: tuple[Finding, ...]) -> None:
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


TEXT_CACHE = _TextCache()


def _in_other_concessive_clause(doc: Any, text: str, modifier: Any, target: Any, concessive: Any) -> bool:
    """A modifier said inside a concessive clause ("Although no erosions are seen, ...") reaches no finding after the
    clause's comma: "although no X, Y" affirms Y."""
    cue = doc[modifier.modifier_span[0]].idx
    aim = target.start_char
    if aim <= cue:
        return False
    sentence = doc[modifier.modifier_span[0]].sent
    for clause in concessive.finditer(text, sentence.start_char, sentence.end_char):
        if clause.start() <= cue < clause.end() <= aim:
            return True
    return False


def findings_from_text(text: str, reference: str, element: str | None = None,
                       region: str | None = None) -> tuple[Finding, ...]:
    """The findings one report text states (affirmed, negated or uncertain), each with its sentence as evidence.
    `region` is the body region of the report the text belongs to (ReportFacts.region; None when not known): a
    concept with `default_site_regions` takes its default site only in a report of one of those regions."""
    if not isinstance(text, str) or not text.strip():
        return ()
    rules = compiled()
    limits = rules.nlp.limits
    text = text[: limits.max_chars]
    key = (reference, element, region, hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=16).digest())
    cached = TEXT_CACHE.get(key)
    if cached is not None:
        return cached
    targets = _find_targets(text, rules)
    if not any(t.concept for t in targets):
        TEXT_CACHE.put(key, ())
        return ()
    pipe = pipeline()
    with pipe.lock:
        doc = pipe.doc(text, targets)
        # Sentence boundaries from one array read (Doc.sents walks every token in Python for each sentence).
        starts = [i for i, flag in enumerate(doc.to_array("SENT_START").tolist()) if flag == 1] or [0]
        if starts[0] != 0:
            starts.insert(0, 0)
        by_sentence: dict[int, list[Any]] = {}
        for ent in doc.ents:
            by_sentence.setdefault(bisect.bisect_right(starts, ent.start) - 1, []).append(ent)
        findings: list[Finding] = []
        target_info = {(t.start, t.end): t for t in targets}
        # ConText's modifiers of each entity, read from its graph once (what ent._.modifiers holds).
        categories_of: dict[tuple[int, int], set[str]] = {}
        concessive = rules.concessive_clause
        for target, modifier in doc._.context_graph.edges:
            if concessive is not None and _in_other_concessive_clause(doc, text, modifier, target, concessive):
                continue
            categories_of.setdefault((target.start, target.end), set()).add(modifier.category)
        for n in sorted(by_sentence):
            if n >= limits.max_sentences:
                break
            end = starts[n + 1] if n + 1 < len(starts) else len(doc)
            sent = doc[starts[n]:end]
            # The sentence's text is a slice of the report text (Span.text would join its tokens one by one).
            findings.extend(_sentence_findings(text[sent.start_char:sent.end_char], sent.start_char,
                                               by_sentence[n], reference, element, rules, targets, target_info,
                                               categories_of, region))
    result = tuple(findings)
    TEXT_CACHE.put(key, result)
    return result
