"""Fast phrase lookup: each pattern is tried only at word starts whose first character it can begin with.

Scanning a report once per concept with a regular expression costs most of the extraction time; reading the
first-character set of every pattern from its parsed form (once, at start-up) lets one pass over the word starts
try just the few patterns that can match there. The result is the same as scanning with each pattern, longest
match per group at each start."""
from __future__ import annotations

import re
from typing import Any, Iterator, Sequence

try:                                    # Python 3.11+
    import re._constants as _c          # type: ignore[import-not-found]
    import re._parser as _p             # type: ignore[import-not-found]
except ImportError:                     # pragma: no cover - older layout
    import sre_constants as _c          # type: ignore[no-redef]
    import sre_parse as _p              # type: ignore[no-redef]

ANY_CHAR = None                          # the first character is not known (e.g. starts with \w or .)
_DIGITS = frozenset("0123456789")
_STARTS = re.compile(r"(?<![\w])\S")          # where a phrase may begin: not inside a word


def _first(items: Sequence[Any]) -> tuple[frozenset[str] | None, bool]:
    """(first characters, lower-cased; None = any) and whether the sequence can match the empty string."""
    chars: set[str] = set()
    for op, av in items:
        if op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
            continue                                            # zero-width
        if op is _c.LITERAL:
            return frozenset(chars | {chr(av).lower()}), False
        if op is _c.IN:
            found = _charset(av)
            return (None if found is None else frozenset(chars | found)), False
        if op is _c.SUBPATTERN:
            sub, nullable = _first(av[-1])
        elif op is _c.BRANCH:
            sub, nullable = set(), False
            for branch in av[1]:
                s, n = _first(branch)
                if s is None:
                    return None, False
                sub |= s
                nullable = nullable or n
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", None)):
            sub, nullable = _first(av[2])
            nullable = nullable or av[0] == 0
        else:
            return None, False                                  # ANY, NOT_LITERAL, GROUPREF ...
        if sub is None:
            return None, False
        chars |= sub
        if not nullable:
            return frozenset(chars), False
    return frozenset(chars), True


def _charset(items: Sequence[Any]) -> set[str] | None:
    out: set[str] = set()
    for op, av in items:
        if op is _c.LITERAL:
            out.add(chr(av).lower())
        elif op is _c.RANGE and av[1] - av[0] < 128:
            out.update(chr(i).lower() for i in range(av[0], av[1] + 1))
        elif op is _c.CATEGORY and av is _c.CATEGORY_DIGIT:
            out |= _DIGITS
        else:
            return None                                         # NEGATE, \w, \s, wide ranges
    return out


def first_chars(pattern: str) -> frozenset[str] | None:
    """The lower-cased characters a match of `pattern` can start with (None when any character may start it)."""
    try:
        chars, nullable = _first(list(_p.parse(pattern, re.IGNORECASE)))
    except (re.error, TypeError, IndexError, AttributeError):
        return None
    return None if nullable else chars


class Dispatcher:
    """Members (anchored compiled patterns with a payload) indexed by the characters they can start with."""

    def __init__(self, members: Sequence[tuple[str, re.Pattern[str], Any]]) -> None:
        # members: (inner pattern text, anchored regex, payload); the payload's group decides "longest per group"
        self.by_char: dict[str, list[tuple[int, re.Pattern[str], Any]]] = {}
        self.anywhere: list[tuple[int, re.Pattern[str], Any]] = []
        for index, (text, regex, payload) in enumerate(members):
            chars = first_chars(text)
            entry = (index, regex, payload)
            if chars is None:
                self.anywhere.append(entry)
            else:
                for ch in chars:
                    self.by_char.setdefault(ch, []).append(entry)
        for ch, entries in self.by_char.items():
            merged = sorted({e[0]: e for e in (*entries, *self.anywhere)}.values(), key=lambda e: e[0])
            self.by_char[ch] = merged
        # One alternation per first character answers "can anything start here?" in a single match; most word
        # starts begin no phrase, so the members are tried one by one only where something matched.
        self.gate: dict[str, re.Pattern[str]] = {
            ch: re.compile("|".join(f"(?:{e[1].pattern})" for e in entries), re.IGNORECASE)
            for ch, entries in self.by_char.items()
        }
        self.gate_anywhere = (re.compile("|".join(f"(?:{e[1].pattern})" for e in self.anywhere), re.IGNORECASE)
                              if self.anywhere else None)

    def matches(self, text: str, group_of: Any = None) -> Iterator[tuple[int, int, Any]]:
        """(start, end, payload): at each word start, the longest match of each group (group_of(payload))."""
        for found in _STARTS.finditer(text):
            start = found.start()
            first = found.group().lower()[:1]
            entries = self.by_char.get(first, self.anywhere)
            gate = self.gate.get(first, self.gate_anywhere)
            if not entries or gate is None or gate.match(text, start) is None:
                continue
            best: dict[Any, tuple[int, Any]] = {}
            for _, regex, payload in entries:
                m = regex.match(text, start)
                if m is None or m.end() <= start:
                    continue
                key = group_of(payload) if group_of else None
                if key not in best or m.end() > best[key][0]:
                    best[key] = (m.end(), payload)
            for end, payload in best.values():
                yield start, end, payload
