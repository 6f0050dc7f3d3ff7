"""Fast phrase lookup: each pattern is tried only at word starts whose first character it can begin with.

Scanning a report once per concept with a regular expression costs most of the extraction time; reading the
first-character set of every pattern from its parsed form (once, at start-up) lets one pass over the word starts
try just the few patterns that can match there. The result is the same as scanning with each pattern, longest
match per group at each start.

Faster still (same results): the lower-case texts (up to 4 characters) each pattern's match can begin with, read
from the same parse, make one trie regex that finds in C the word starts worth trying, and at such a start in ASCII
text only the members whose prefixes fit are tried (behind their joint alternation). `Prefiltered` skips a regex scan
of an ASCII text that holds none of the texts every match must contain ("mm"/"cm" for a depth, ";"/"but"... for a
clause break)."""
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
PREFIX_CHARS = 4                                # prefixes are read up to this many characters
MAX_PREFIXES = 4096                             # more alternatives than this: the pattern is tried everywhere
MAX_NARROWED = 20000                            # memo of member lists per 4-character text (bounded)


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


class _TooMany(Exception):
    pass


def _extend(items: Sequence[Any], open_: set[str], done: set[str]) -> set[str]:
    """Prefixes after a sequence: `open_` may still grow, `done` are final (PREFIX_CHARS long, or cut short where
    the pattern stops being a plain literal, which only makes the prefix less selective)."""
    for op, av in items:
        if not open_:
            break
        if op is _c.LITERAL:
            ch = chr(av).lower()
            if len(ch) != 1 or not ch.isascii():
                done |= open_
                open_ = set()
                continue
            grown = {s + ch for s in open_}
            done |= {s for s in grown if len(s) >= PREFIX_CHARS}
            open_ = {s for s in grown if len(s) < PREFIX_CHARS}
        elif op is _c.IN and _small_class(av):
            grown = {s + ch for s in open_ for ch in _small_class(av)}
            done |= {s for s in grown if len(s) >= PREFIX_CHARS}
            open_ = {s for s in grown if len(s) < PREFIX_CHARS}
        elif op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
            continue                                            # zero-width: ignoring it only admits more
        elif op is _c.SUBPATTERN:
            open_ = _extend(av[-1], open_, done)
        elif op is _c.BRANCH:
            merged: set[str] = set()
            for branch in av[1]:
                merged |= _extend(branch, set(open_), done)
            open_ = merged
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT) and av[0] == 0 and av[1] == 1:
            open_ = open_ | _extend(av[2], set(open_), done)
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT) and av[0] == 1 and av[1] == 1:
            open_ = _extend(av[2], open_, done)
        else:
            done |= open_                                       # classes, repeats, ...: the prefix ends here
            open_ = set()
        if len(open_) + len(done) > MAX_PREFIXES:
            raise _TooMany
    return open_


def _small_class(items: Sequence[Any]) -> frozenset[str]:
    """The lower-case characters of a class of ASCII literals and short ASCII ranges ("[LT]", "[1-5]", "[- ]");
    empty for any other class (negated, categories, wide ranges)."""
    out: set[str] = set()
    for op, av in items:
        if op is _c.LITERAL and av < 128:
            out.add(chr(av).lower())
        elif op is _c.RANGE and av[1] < 128 and av[1] - av[0] < 16:
            out.update(chr(i).lower() for i in range(av[0], av[1] + 1))
        else:
            return frozenset()
    return frozenset(out)


def prefixes(pattern: str) -> frozenset[str]:
    """Lower-case ASCII texts, each at most PREFIX_CHARS long, one of which every match of `pattern` (matched
    case-insensitively) begins with; {""} when nothing useful is known."""
    try:
        done: set[str] = set()
        open_ = _extend(list(_p.parse(pattern, re.IGNORECASE)), {""}, done)
        return frozenset(done | open_)
    except (_TooMany, re.error, TypeError, IndexError, AttributeError):
        return frozenset({""})


def _trie(texts: frozenset[str]) -> str:
    """A regex matching exactly the texts' beginnings as a character trie (fast to fail)."""
    if "" in texts:
        return ""
    heads: dict[str, set[str]] = {}
    for text in texts:
        heads.setdefault(text[0], set()).add(text[1:])
    parts = [re.escape(head) + (f"(?:{_trie(frozenset(rest))})" if "" not in rest else "")
             for head, rest in sorted(heads.items())]
    return "|".join(parts)


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
        # The lower-case texts (up to PREFIX_CHARS characters) each member's match can begin with; one regex of all
        # of them finds the word starts worth trying.
        self.prefixes: list[frozenset[str]] = [prefixes(regex.pattern) for _, regex, _ in members]
        every = frozenset().union(*self.prefixes) if self.prefixes else frozenset()
        self.scan = re.compile(rf"(?<![\w])(?=\S)(?={_trie(every)})", re.IGNORECASE) if every else re.compile(r"(?!)")
        self._narrowed: dict[str, tuple[list[tuple[int, re.Pattern[str], Any]], re.Pattern[str] | None]] = {}

    def matches(self, text: str, group_of: Any = None) -> Iterator[tuple[int, int, Any]]:
        """(start, end, payload): at each word start, the longest match of each group (group_of(payload))."""
        # Only word starts the prefix scan admits can start a match (one C-level pass instead of a Python step per
        # word); there, an ASCII text narrows the members to those whose prefixes fit, else the gate decides.
        narrowed = self._narrowed
        for found in self.scan.finditer(text):
            start = found.start()
            first = text[start].lower()[:1]
            chunk = text[start:start + PREFIX_CHARS]
            if chunk.isascii():
                key = chunk.lower()
                known = narrowed.get(key)
                if known is None:
                    known = self._narrow(key, self.by_char.get(first, self.anywhere))
                entries, gate = known
                if gate is not None and gate.match(text, start) is None:
                    continue
            else:
                entries = self.by_char.get(first, self.anywhere)
                gate = self.gate.get(first, self.gate_anywhere)
                if not entries or gate is None or gate.match(text, start) is None:
                    continue
            if not entries:
                continue
            best: dict[Any, tuple[int, Any]] = {}
            for _, regex, payload in entries:
                m = regex.match(text, start)
                if m is None or m.end() <= start:
                    continue
                key_ = group_of(payload) if group_of else None
                if key_ not in best or m.end() > best[key_][0]:
                    best[key_] = (m.end(), payload)
            for end, payload in best.values():
                yield start, end, payload

    def _narrow(self, key: str, entries: list[tuple[int, re.Pattern[str], Any]]
                ) -> tuple[list[tuple[int, re.Pattern[str], Any]], re.Pattern[str] | None]:
        """The entries (in order) that can match a lower-case ASCII text beginning with `key`, and (for more than
        one) their alternation, which says in one match whether any of them matches."""
        out = [e for e in entries
               if any(key.startswith(s) or s.startswith(key) for s in self.prefixes[e[0]])]
        gate = (re.compile("|".join(f"(?:{e[1].pattern})" for e in out), re.IGNORECASE) if len(out) > 1
                else None)
        if len(self._narrowed) < MAX_NARROWED:
            self._narrowed[key] = (out, gate)
        return out, gate


_DIGIT_SET = frozenset("0123456789")


def _better(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    if b is None or not b:
        return a
    if a is None:
        return b
    return b if (min(map(len, b)), -len(b)) > (min(map(len, a)), -len(a)) else a


def _requirement(items: Sequence[Any]) -> frozenset[str] | None:
    """Lower-case ASCII texts one of which every match of the sequence contains (None: nothing known)."""
    best: frozenset[str] | None = None
    run = ""
    for op, av in items:
        if op is _c.LITERAL and av < 128:
            run += chr(av).lower()
            continue
        if op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
            continue                                    # zero-width: the literals around it stay adjacent
        if run:
            best = _better(best, frozenset({run}))
            run = ""
        if op is _c.SUBPATTERN:
            best = _better(best, _requirement(av[-1]))
        elif op is _c.BRANCH:
            found = [_requirement(branch) for branch in av[1]]
            if all(found):
                best = _better(best, frozenset().union(*found))
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", None)) and av[0] >= 1:
            best = _better(best, _requirement(av[2]))
        elif op is _c.IN:
            if all(o is _c.CATEGORY and a is _c.CATEGORY_DIGIT for o, a in av):
                best = _better(best, _DIGIT_SET)     # in ASCII text \d is 0-9
            else:
                best = _better(best, _small_class(av) or None)
    if run:
        best = _better(best, frozenset({run}))
    return best


def required_texts(pattern: re.Pattern[str]) -> frozenset[str] | None:
    """Lower-case ASCII texts one of which any match of `pattern` contains (None when not known). In ASCII text
    (where case-insensitive matching is plain lower-casing) a text containing none of them cannot match."""
    try:
        return _requirement(list(_p.parse(pattern.pattern, pattern.flags)))
    except (re.error, TypeError, IndexError, AttributeError, ValueError):
        return None


class Prefiltered:
    """A compiled regex with a cheap test first: an ASCII text that contains none of the pattern's required texts
    (lower-cased) has no match, so the regex scan is skipped. Results are exactly the regex's."""

    def __init__(self, regex: re.Pattern[str]) -> None:
        self.regex = regex
        self.required = required_texts(regex)

    def cannot_match(self, text: str) -> bool:
        if self.required is None or not text.isascii():
            return False
        low = text.lower()
        return not any(r in low for r in self.required)

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        return iter(()) if self.cannot_match(text) else self.regex.finditer(text)
