"""Markdown for card details: an escape for every piece of text taken from a resource or report, so a report
cannot inject HTML, scripts or links into the EHR's card view (the sandbox renders with rehype-raw)."""
from __future__ import annotations

import re

_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
# CommonMark lets any ASCII punctuation be backslash-escaped; these are the ones that start syntax. ":" and "."
# are escaped too so GFM autolinks (http://..., www.x) cannot form.
_MARKDOWN = set("\\[]()!*_`#|~{}:+-=.")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c]+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
MAX_TEXT = 500


def escape(text: object, limit: int = MAX_TEXT) -> str:
    """Text safe to place inside a Markdown line: HTML and Markdown syntax neutralised, one line, bounded."""
    value = _CONTROL.sub("", _LINE_BREAKS.sub(" ", str(text))).strip()
    if len(value) > limit:
        value = value[: limit - 1].rstrip() + "…"
    out = []
    for ch in value:
        if ch in _HTML:
            out.append(_HTML[ch])
        elif ch in _MARKDOWN:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)
