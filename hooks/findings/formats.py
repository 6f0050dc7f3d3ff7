"""Report attachments as text: text/plain (any charset), text/html (inscriptis: block structure kept, so headings,
paragraphs and list items stay on their own lines), text/rtf (striprtf). Other types (PDF, images, DICOM ...) are
not read: they are named so the caller can count them in the log."""
from __future__ import annotations

import base64
import binascii
import codecs
from typing import Any

PLAIN = frozenset({"text/plain"})
HTML = frozenset({"text/html", "application/xhtml+xml"})
RTF = frozenset({"text/rtf", "application/rtf", "text/richtext"})
# Markup costs bytes: an HTML or RTF report of max_chars characters of text may be several times larger.
MARKUP_FACTOR = 16


def media_type(attachment: Any) -> tuple[str | None, str | None]:
    """(media type in lower case, charset or None) of an attachment's contentType."""
    content_type = getattr(attachment, "contentType", None)
    if not isinstance(content_type, str) or not content_type.strip():
        return None, None
    media, _, params = content_type.partition(";")
    charset = None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"').lower()
    return media.strip().lower(), charset


def readable(media: str | None) -> bool:
    return media in PLAIN or media in HTML or media in RTF


def _data(attachment: Any) -> bytes | None:
    data = getattr(attachment, "data", None)
    if data is None:
        return None
    if isinstance(data, str):          # models normally hold decoded bytes; raw strings are decoded here
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return None
    return bytes(data) if isinstance(data, (bytes, bytearray)) else None


def _decode(data: bytes, charset: str | None, default: str) -> str:
    charset = charset or default
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = default
    return data.decode(charset, errors="replace")


def html_to_text(html: str) -> str:
    from inscriptis import get_text
    from inscriptis.model.config import ParserConfig

    return get_text(html, ParserConfig(display_links=False, display_images=False))


def rtf_to_text(rtf: str) -> str:
    from striprtf.striprtf import rtf_to_text as strip

    return strip(rtf, errors="replace")


def attachment_text(attachment: Any, max_chars: int) -> tuple[str | None, str | None]:
    """(text, None) for a readable attachment; (None, what) when it cannot be read, `what` naming the kind (its media
    type, "url-only" for a url that was not fetched, "no-data", "undecodable") for the log; (None, None) for none."""
    media, charset = media_type(attachment)
    data = _data(attachment)
    if data is None:
        if getattr(attachment, "url", None):
            return None, "url-only" if readable(media) or media is None else media
        return None, ("no-data" if media else None)
    if media in PLAIN:
        # Bound the bytes before decoding (4 bytes per char covers any UTF-8 text of max_chars characters).
        return _decode(data[: max_chars * 4], charset, "utf-8")[:max_chars], None
    if media in HTML:
        try:
            return html_to_text(_decode(data[: max_chars * MARKUP_FACTOR], charset, "utf-8"))[:max_chars], None
        except Exception:          # noqa: BLE001  (malformed markup: unread, never a 500)
            return None, "undecodable"
    if media in RTF:
        try:
            # RTF is 7-bit with escapes; its \ansicpg code page is applied by striprtf.
            return rtf_to_text(_decode(data[: max_chars * MARKUP_FACTOR], charset, "latin-1"))[:max_chars], None
        except Exception:          # noqa: BLE001
            return None, "undecodable"
    return None, media or "unknown"
