"""One canonical form of a FHIR server base URL, so the allowlist compares what will really be read.

`http://H:80/fhir/`, `HTTP://h/fhir` and `http://h/fhir` are the same server; `/fhir/../evil`, `/fhir/%2e%2e/evil`
and `/fhir/..;/evil` are not below `/fhir` and are refused outright (servers and proxies resolve dot segments,
`;` path parameters and encoded slashes differently, so no spelling of them is safe to pass on)."""
from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9.\-_]+)$")


class UnsafeUrl(ValueError):
    """A URL that cannot be compared safely; the message names why (never the URL)."""


def canonical_base_url(url: str) -> str:
    """`scheme://host[:port]/path` with lower-case scheme and host, no default port, no trailing slash.

    Raises UnsafeUrl for credentials, a query or fragment, dot segments (also percent-encoded), `;` parameters,
    encoded slashes or backslashes, and anything that is not an absolute http(s) URL."""
    if not isinstance(url, str) or not url or any(c.isspace() or ord(c) < 0x20 for c in url) or "\\" in url:
        raise UnsafeUrl("must be an absolute http(s) URL without spaces or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeUrl("must be an absolute http(s) URL with a valid port") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise UnsafeUrl("must be an absolute http(s) URL")
    if "@" in parts.netloc:
        raise UnsafeUrl("must not carry credentials (user or password)")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise UnsafeUrl("must not have a query or fragment")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if not _HOST.match(host):
        raise UnsafeUrl("has an invalid host")
    path = parts.path
    if ";" in path:
        raise UnsafeUrl("must not have ';' path parameters")
    decoded = unquote(path)
    if "%" in decoded or re.search(r"%2f|%5c", path, re.IGNORECASE):
        raise UnsafeUrl("must not have encoded slashes or double encoding")
    segments = decoded.split("/")
    if any(segment in (".", "..") for segment in segments):
        raise UnsafeUrl("must not have '.' or '..' path segments")
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    # one spelling of the path: %66hir and fhir are the same segment (encoded slashes were refused above)
    path = quote(decoded, safe="/:@!$&'()*+,=-._~")
    return f"{scheme}://{netloc}{path.rstrip('/')}"


def is_below(url: str, base: str) -> bool:
    """True when canonical `url` is canonical `base` or a path under it (segment boundary, exact case)."""
    return url == base or url.startswith(base + "/")
