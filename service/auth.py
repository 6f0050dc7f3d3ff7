"""JWT verification of every CDS Hooks call, in the order of the CDS Hooks security best practices.

Trusted issuers come from TRUSTED_ISSUERS (JSON) or TRUSTED_ISSUERS_FILE (JSON or YAML). Any failure is a bare 401
and one log line with iss/jti/reason; the token itself is never logged, stored or echoed.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import quote

import jwt
import requests
import yaml
from flask import Flask, Response, g, request
from sqlalchemy import BigInteger, Column, String, Table, delete, insert, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from service import storage

log = logging.getLogger(__name__)

#: only asymmetric signatures: CDS Hooks forbids `none` and HMAC ("SHALL NOT")
ASYMMETRIC_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
#: paths a load balancer or Prometheus reaches without a JWT (/metrics has its own METRICS_TOKEN)
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
OPEN_PREFIXES = ("/explain/",)
#: without PUBLIC_BASE_URL (development only) the audience is the request URL, but only for these host names:
#: any other Host is the caller's choice, and a token minted for that host must not be accepted here
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
MAX_TOKEN_CHARS = 16_384
MAX_JWKS_BYTES = 256 * 1024
MAX_ID_CHARS = 255

#: the replay guard, shared by every instance on the same database: (iss, jti) is remembered until the token expires
jwt_replay = Table(
    "jwt_replay",
    storage.metadata,
    Column("iss", String(512), primary_key=True),
    Column("jti", String(MAX_ID_CHARS), primary_key=True),
    Column("expires_at", BigInteger, nullable=False, index=True),
)


class AuthError(Exception):
    """A token that must be refused; `reason` is a fixed code, safe to log."""

    def __init__(self, reason: str, *, iss: str | None = None, jti: str | None = None, tenant: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.iss = iss
        self.jti = jti
        self.tenant = tenant


class ReplayGuardUnavailable(AuthError):
    """The token could not be checked for replay because the database is down: 503, not 401."""


class AuthConfigError(ValueError):
    """The trusted-issuer configuration cannot be used; start-up stops with the place and the reason."""


# ----------------------------------------------------------------------------------------------------------------
# Trusted issuers
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedIssuer:
    """One EHR (CDS client) we accept calls from, and where its public keys are."""

    iss: str
    jwks_url: str | None = None
    jku: frozenset[str] = frozenset()            # allowlisted `jku` header values (exact URLs)
    jwks: Mapping[str, Any] | None = None        # inline JWK Set (or read from jwks_file)
    algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS
    tenants: frozenset[str] | None = None        # when set, the `tenant` claim is required and must be listed

    @classmethod
    def from_mapping(cls, raw: Any, where: str, base_dir: Path | None = None) -> "TrustedIssuer":
        if not isinstance(raw, Mapping):
            raise AuthConfigError(f"{where}: an issuer must be an object")
        known = {"iss", "jwks_url", "jku", "jwks", "jwks_file", "algorithms", "tenants"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise AuthConfigError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(known)}")
        iss = raw.get("iss")
        if not isinstance(iss, str) or not iss or len(iss) > 512:
            raise AuthConfigError(f"{where}.iss: required, a string of at most 512 characters")
        jwks_url = raw.get("jwks_url")
        if jwks_url is not None and not _is_http_url(jwks_url):
            raise AuthConfigError(f"{where}.jwks_url: must be an http(s) URL")
        jku = raw.get("jku", [])
        if isinstance(jku, str):
            jku = [jku]
        if not isinstance(jku, list) or not all(_is_http_url(u) for u in jku):
            raise AuthConfigError(f"{where}.jku: must be a list of http(s) URLs")
        jwks = raw.get("jwks")
        jwks_file = raw.get("jwks_file")
        if jwks is not None and jwks_file is not None:
            raise AuthConfigError(f"{where}: give jwks or jwks_file, not both")
        if jwks_file is not None:
            if not isinstance(jwks_file, str):
                raise AuthConfigError(f"{where}.jwks_file: must be a path")
            path = Path(jwks_file)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            try:
                jwks = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise AuthConfigError(f"{where}.jwks_file: cannot read a JSON JWK Set ({type(exc).__name__})") from None
        if jwks is not None:
            _check_jwks(jwks, f"{where}.jwks")
        if jwks is None and jwks_url is None and not jku:
            raise AuthConfigError(f"{where}: give the issuer's keys: jwks, jwks_file, jwks_url or jku")
        algorithms = raw.get("algorithms", sorted(ASYMMETRIC_ALGORITHMS))
        if isinstance(algorithms, str):
            algorithms = [algorithms]
        if not isinstance(algorithms, list) or not algorithms:
            raise AuthConfigError(f"{where}.algorithms: must be a non-empty list")
        refused = sorted(set(map(str, algorithms)) - ASYMMETRIC_ALGORITHMS)
        if refused:
            raise AuthConfigError(
                f"{where}.algorithms: {refused} not allowed; only {sorted(ASYMMETRIC_ALGORITHMS)} (never none or HMAC)"
            )
        tenants = raw.get("tenants")
        if tenants is not None:
            if isinstance(tenants, str):
                tenants = [tenants]
            if not isinstance(tenants, list) or not tenants or not all(isinstance(t, str) for t in tenants):
                raise AuthConfigError(f"{where}.tenants: must be a non-empty list of strings")
            tenants = frozenset(tenants)
        return cls(
            iss=iss,
            jwks_url=jwks_url,
            jku=frozenset(jku),
            jwks=jwks,
            algorithms=frozenset(algorithms),
            tenants=tenants,
        )


def _is_http_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://")) and len(value) <= 2048


def _check_jwks(jwks: Any, where: str) -> None:
    try:
        usable = keys_by_kid(jwks)
    except ValueError as exc:
        raise AuthConfigError(f"{where}: not a JWK Set ({exc})") from None
    if not usable:
        raise AuthConfigError(f"{where}: no usable EC/RSA signing key with a kid")


def parse_trusted_issuers(document: Any, where: str, base_dir: Path | None = None) -> dict[str, TrustedIssuer]:
    """Accept a list of issuers, or {"issuers": [...]}."""
    if isinstance(document, Mapping) and "issuers" in document:
        document = document["issuers"]
        where = f"{where}.issuers"
    if not isinstance(document, list):
        raise AuthConfigError(f"{where}: must be a list of issuers or an object with 'issuers'")
    issuers: dict[str, TrustedIssuer] = {}
    for index, raw in enumerate(document):
        issuer = TrustedIssuer.from_mapping(raw, f"{where}[{index}]", base_dir)
        if issuer.iss in issuers:
            raise AuthConfigError(f"{where}[{index}].iss: issuer listed twice")
        issuers[issuer.iss] = issuer
    return issuers


def load_trusted_issuers(config: Mapping[str, Any]) -> dict[str, TrustedIssuer]:
    """TRUSTED_ISSUERS (JSON text, or an already parsed list/mapping) and TRUSTED_ISSUERS_FILE (JSON or YAML)."""
    issuers: dict[str, TrustedIssuer] = {}
    inline = config.get("TRUSTED_ISSUERS")
    if isinstance(inline, str) and inline.strip():
        try:
            inline = json.loads(inline)
        except ValueError:
            raise AuthConfigError("TRUSTED_ISSUERS: not valid JSON") from None
    if inline:
        issuers.update(parse_trusted_issuers(inline, "TRUSTED_ISSUERS"))
    path_value = config.get("TRUSTED_ISSUERS_FILE")
    if path_value:
        path = Path(str(path_value))
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise AuthConfigError(f"TRUSTED_ISSUERS_FILE {path}: cannot read ({type(exc).__name__})") from None
        try:
            document = yaml.safe_load(text) if path.suffix in {".yaml", ".yml"} else json.loads(text)
        except (ValueError, yaml.YAMLError):
            raise AuthConfigError(f"TRUSTED_ISSUERS_FILE {path}: not valid JSON/YAML") from None
        for iss, issuer in parse_trusted_issuers(document, str(path), path.parent).items():
            if iss in issuers:
                raise AuthConfigError(f"TRUSTED_ISSUERS_FILE {path}: issuer also in TRUSTED_ISSUERS")
            issuers[iss] = issuer
    return issuers


# ----------------------------------------------------------------------------------------------------------------
# Keys: inline or fetched JWK Sets, cached, re-fetched on an unknown kid at a limited rate
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    """One signing key of a JWK Set: `alg` is the JWK's own `alg` when it declares one."""

    kid: str
    alg: str | None
    key: Any                                     # a cryptography public key


def keys_by_kid(jwks: Any) -> dict[str, PublicKey]:
    """The usable EC/RSA signing keys of a JWK Set; anything else (symmetric, private-only, broken) is skipped."""
    raw_keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(raw_keys, list):
        raise ValueError("a JWK Set needs a 'keys' list")
    keys: dict[str, PublicKey] = {}
    for raw in raw_keys[:100]:
        if not isinstance(raw, Mapping) or raw.get("kty") not in ("EC", "RSA"):
            continue
        kid, alg, use = raw.get("kid"), raw.get("alg"), raw.get("use")
        if not isinstance(kid, str) or not kid or use not in (None, "sig") or kid in keys:
            continue
        if alg is not None and alg not in ASYMMETRIC_ALGORITHMS:
            continue
        try:
            key = jwt.PyJWK(dict(raw), algorithm=alg or ("ES256" if raw["kty"] == "EC" else "RS256")).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        if hasattr(key, "private_bytes"):
            key = key.public_key()                # a JWK with "d": only its public half is ever used
        keys[kid] = PublicKey(kid=kid, alg=alg, key=key)
    return keys


@dataclass
class _CachedKeys:
    keys: dict[str, PublicKey] = field(default_factory=dict)
    fetched_at: float = float("-inf")
    succeeded_at: float = float("-inf")
    lock: threading.Lock = field(default_factory=threading.Lock)


class KeyStore:
    """The public keys of the trusted issuers, by source (inline or URL) and `kid`."""

    def __init__(
        self,
        *,
        cache_seconds: float = 300.0,
        refetch_min_seconds: float = 30.0,
        fetch_timeout: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        session: requests.Session | None = None,
    ):
        self.cache_seconds = cache_seconds
        self.refetch_min_seconds = refetch_min_seconds
        self.fetch_timeout = fetch_timeout
        self.clock = clock
        self.session = session             # None: a fresh connection per fetch (sessions are not thread-safe)
        self._cache: dict[str, _CachedKeys] = {}
        self._inline: dict[str, dict[str, PublicKey]] = {}
        self._guard = threading.Lock()
        self.fetch_count = 0

    def key_for(self, issuer: TrustedIssuer, kid: str, jku: str | None) -> PublicKey:
        """The key named by kid: the issuer's inline set first (a copy exchanged out-of-band, e.g. of the
        sandbox's offline-unreachable jku), else the (allowlisted) jku, else the issuer's jwks_url."""
        if issuer.jwks is not None:
            with self._guard:
                inline = self._inline.get(issuer.iss)
                if inline is None:
                    inline = self._inline[issuer.iss] = keys_by_kid(issuer.jwks)
            if kid in inline:
                return inline[kid]
        if jku is not None:
            return self._from_url(jku, kid)
        if issuer.jwks_url is not None:
            return self._from_url(issuer.jwks_url, kid)
        raise AuthError("unknown_kid")

    def _from_url(self, url: str, kid: str) -> PublicKey:
        with self._guard:
            entry = self._cache.setdefault(url, _CachedKeys())
        with entry.lock:
            age = self.clock() - entry.fetched_at
            stale = age >= self.cache_seconds
            # an unknown kid may be a rotated key: re-fetch, but at most once per refetch_min_seconds per source
            unknown = kid not in entry.keys and age >= self.refetch_min_seconds
            if stale or unknown:
                self._refresh(url, entry)
            key = entry.keys.get(kid)
        if key is None:
            raise AuthError("unknown_kid")
        return key

    def _refresh(self, url: str, entry: _CachedKeys) -> None:
        now = self.clock()
        entry.fetched_at = now            # failures count too: a dead key server is not hammered
        self.fetch_count += 1
        try:
            entry.keys = keys_by_kid(json.loads(self._download(url)))
            entry.succeeded_at = now
            log.info("jwks_fetched", extra={"fetched_keys": len(entry.keys)})
        except (requests.RequestException, ValueError, TypeError) as exc:
            # keep serving the keys we had (a key server hiccup must not lock every EHR out), but not for ever:
            # a key the issuer revoked while its server was down must stop working at some point
            if now - entry.succeeded_at > max(12 * self.cache_seconds, 3600.0):
                entry.keys = {}
            log.warning("jwks_fetch_failed", extra={"reason": type(exc).__name__})

    def _download(self, url: str) -> bytes:
        """The JWK Set document: bounded in size and, as a whole, in time (a dripping server cannot hold us)."""
        started = time.monotonic()
        response = (self.session or requests).get(
            url,
            timeout=self.fetch_timeout,
            headers={"Accept": "application/json", "Accept-Encoding": "identity"},
            stream=True,
            allow_redirects=False,
        )
        with response:
            if response.status_code != 200:
                raise ValueError("JWKS answer is not 200")
            body = b""
            for chunk in response.iter_content(16 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS answer too large")
                if time.monotonic() - started > self.fetch_timeout:
                    raise ValueError("JWKS answer too slow")
        return body


# ----------------------------------------------------------------------------------------------------------------
# Replay guard: (iss, jti) remembered in the database until the token expires
# ----------------------------------------------------------------------------------------------------------------


class ReplayGuard:
    """Insert-or-fail on (iss, jti): a second use of a jti is refused on every instance sharing the database."""

    def __init__(self, engine: Engine, purge_every_seconds: float = 60.0):
        self.engine = engine
        self.purge_every_seconds = purge_every_seconds
        self._last_purge = float("-inf")

    def remember(self, iss: str, jti: str, expires_at: int, now: float) -> None:
        """Record the jti, or raise AuthError("replayed_jti") if a token still valid already used it."""
        try:
            with self.engine.begin() as conn:
                if now - self._last_purge >= self.purge_every_seconds:
                    self._last_purge = now
                    conn.execute(delete(jwt_replay).where(jwt_replay.c.expires_at < int(now)))
                conn.execute(insert(jwt_replay).values(iss=iss, jti=jti, expires_at=int(expires_at)))
            return
        except IntegrityError:
            pass
        except SQLAlchemyError as exc:
            self._unavailable(exc)
        # the jti is known; only a row whose token has expired may be taken over (one statement, so two
        # concurrent takers cannot both succeed)
        try:
            with self.engine.begin() as conn:
                taken = conn.execute(
                    update(jwt_replay)
                    .where(jwt_replay.c.iss == iss, jwt_replay.c.jti == jti, jwt_replay.c.expires_at < int(now))
                    .values(expires_at=int(expires_at))
                ).rowcount
        except SQLAlchemyError as exc:
            self._unavailable(exc)
        if taken != 1:
            raise AuthError("replayed_jti")

    @staticmethod
    def _unavailable(exc: Exception) -> None:
        # fail closed: without the replay guard a stolen token could be replayed. The call is refused, but as
        # 503 + Retry-After: the credentials may be fine, the database is what is down.
        log.error("replay_guard_unavailable", extra={"reason": type(exc).__name__})
        raise ReplayGuardUnavailable("replay_guard_unavailable") from None


# ----------------------------------------------------------------------------------------------------------------
# The verifier
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedToken:
    iss: str
    jti: str
    tenant: str | None
    claims: Mapping[str, Any]


class JwtVerifier:
    """Checks a bearer token: iss -> aud -> exp/iat/nbf -> tenant -> alg/jku/kid -> signature -> jti."""

    def __init__(
        self,
        issuers: Mapping[str, TrustedIssuer],
        keys: KeyStore,
        replay_guard: ReplayGuard | None,
        *,
        leeway_seconds: float = 30.0,
        max_lifetime_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ):
        self.issuers = dict(issuers)
        self.keys = keys
        self.replay_guard = replay_guard
        self.leeway = leeway_seconds
        self.max_lifetime = max_lifetime_seconds
        self.clock = clock

    def verify(self, authorization: str | None, audience: str) -> VerifiedToken:
        token = _bearer_token(authorization)
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthError("malformed_token") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise AuthError("malformed_token")

        iss = _string_claim(claims, "iss", 512)
        jti_raw = claims.get("jti")
        jti = jti_raw[:MAX_ID_CHARS] if isinstance(jti_raw, str) else None
        tenant_raw = claims.get("tenant")
        tenant = tenant_raw[:MAX_ID_CHARS] if isinstance(tenant_raw, str) else None
        try:
            return self._verify(token, header, claims, iss, audience)
        except AuthError as exc:
            exc.iss, exc.jti, exc.tenant = iss, jti, tenant
            raise

    def _verify(self, token: str, header: dict, claims: dict, iss: str | None, audience: str) -> VerifiedToken:
        # 1. issuer on the allowlist
        if iss is None:
            raise AuthError("missing_claim")
        issuer = self.issuers.get(iss)
        if issuer is None:
            raise AuthError("issuer_not_trusted")
        # 2. audience: the exact URL called
        aud = claims.get("aud")
        if aud is None:
            raise AuthError("missing_claim")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or audience not in audiences:
            raise AuthError("audience_mismatch")
        # 3. times, with a small leeway for clock skew
        now = self.clock()
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf", 0)
        if exp is None or iat is None:
            raise AuthError("missing_claim")
        if not all(_is_number(v) for v in (exp, iat, nbf)):
            raise AuthError("malformed_token")
        if exp < now - self.leeway:
            raise AuthError("expired")
        if iat > now + self.leeway or nbf > now + self.leeway:
            raise AuthError("not_yet_valid")
        if exp - now > self.max_lifetime:
            # the replay guard remembers a jti until exp; a token valid for days would defeat the bound
            raise AuthError("lifetime_too_long")
        # 4. tenant on the issuer's allowlist (when the issuer has one)
        if issuer.tenants is not None:
            tenant = claims.get("tenant")
            if tenant is None:
                raise AuthError("missing_claim")
            if not isinstance(tenant, str) or tenant not in issuer.tenants:
                raise AuthError("tenant_not_allowed")
        jti = claims.get("jti")
        if jti is None:
            raise AuthError("missing_claim")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_ID_CHARS:
            raise AuthError("malformed_token")
        # 5. signature with the issuer's key named by kid
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise AuthError("algorithm_not_allowed")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise AuthError("malformed_token")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("missing_claim")
        jku = header.get("jku")
        if jku is not None and (not isinstance(jku, str) or jku not in issuer.jku):
            raise AuthError("jku_not_allowed")
        key = self.keys.key_for(issuer, kid, jku)
        if key.alg is not None and key.alg != alg:
            raise AuthError("algorithm_not_allowed")
        try:
            verified = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audience,
                issuer=iss,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "jti"]},
            )
        except jwt.InvalidSignatureError:
            raise AuthError("bad_signature") from None
        except jwt.ExpiredSignatureError:
            raise AuthError("expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("not_yet_valid") from None
        except jwt.InvalidAudienceError:
            raise AuthError("audience_mismatch") from None
        except jwt.MissingRequiredClaimError:
            raise AuthError("missing_claim") from None
        except (jwt.InvalidAlgorithmError, jwt.InvalidKeyError):
            raise AuthError("algorithm_not_allowed") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            # a key of the wrong type for alg (RSA key, ES384 header) ends here too
            raise AuthError("bad_signature") from None
        # 6. jti never seen before (only now: an unsigned token must not be able to burn a jti)
        if self.replay_guard is not None:
            self.replay_guard.remember(iss, jti, int(exp + self.leeway) + 1, now)
        tenant = verified.get("tenant") if isinstance(verified.get("tenant"), str) else None
        return VerifiedToken(iss=iss, jti=jti, tenant=tenant, claims=verified)


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("missing_token")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("missing_token")
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise AuthError("malformed_token")
    return token


def _string_claim(claims: Mapping[str, Any], name: str, limit: int) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


# ----------------------------------------------------------------------------------------------------------------
# Flask integration
# ----------------------------------------------------------------------------------------------------------------

EXTENSION_KEY = "msk_cds.auth"


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def _setting(config: Mapping[str, Any], name: str, default: float) -> float:
    value = config.get(name, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AuthConfigError(f"{name}: must be a number") from None


def _storage_engine(app: Flask) -> Engine | None:
    store = app.extensions.get("msk_cds.storage")
    engine = getattr(store, "engine", None)
    return engine if isinstance(engine, Engine) else None


def init_app(app: Flask) -> None:
    """Verify the JWT of every call except CORS preflights and health/metrics, unless AUTH_DISABLED."""
    config = app.config
    if _truthy(config.get("AUTH_DISABLED", False)):
        log.warning("authentication disabled: development only", extra={"reason": "AUTH_DISABLED"})
        app.extensions[EXTENSION_KEY] = None
        return

    issuers = load_trusted_issuers(config)
    if not issuers:
        log.error(
            "authentication on but no trusted issuers: every call is refused; set TRUSTED_ISSUERS (JSON) or "
            "TRUSTED_ISSUERS_FILE (see deploy/trusted-issuers.sandbox.json), or AUTH_DISABLED=true for development",
            extra={"reason": "no_trusted_issuers"},
        )
    engine = _storage_engine(app)
    replay_guard = None
    if engine is not None:
        replay_guard = ReplayGuard(engine)        # its table is created with the rest of storage.metadata
    else:
        log.error("replay guard without a database: jti replay is checked by no one", extra={"reason": "no_storage"})
    verifier = JwtVerifier(
        issuers,
        KeyStore(
            cache_seconds=_setting(config, "JWKS_CACHE_SECONDS", 300.0),
            refetch_min_seconds=_setting(config, "JWKS_REFETCH_MIN_SECONDS", 30.0),
            fetch_timeout=_setting(config, "JWKS_FETCH_TIMEOUT_SECONDS", 3.0),
        ),
        replay_guard,
        leeway_seconds=_setting(config, "JWT_LEEWAY_SECONDS", 30.0),
        max_lifetime_seconds=_setting(config, "JWT_MAX_LIFETIME_SECONDS", 3600.0),
    )
    app.extensions[EXTENSION_KEY] = verifier
    public_base_url = str(config.get("PUBLIC_BASE_URL") or "").rstrip("/")
    if not public_base_url and issuers:
        # production refuses to start without it (service.config.check_production); in development the audience
        # is the request URL for loopback hosts only, so a token minted for another host is never accepted
        log.warning(
            "PUBLIC_BASE_URL not set: development only; the JWT audience is the request URL on localhost, and "
            "calls to any other host name are refused",
            extra={"reason": "no_public_base_url"},
        )

    @app.before_request
    def authenticate() -> Response | None:
        # /explain/ pages carry their own short-lived signed token (service.explain)
        if request.method == "OPTIONS" or request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
            return None
        try:
            token = verifier.verify(request.headers.get("Authorization"), _audience(public_base_url))
        except ReplayGuardUnavailable as exc:
            g.auth_reason = exc.reason
            from service.errors import CdsError

            raise CdsError.unavailable("token verification (the database)") from None
        except AuthError as exc:
            g.auth_reason = exc.reason
            log.warning(
                "auth_rejected",
                extra={"iss": exc.iss, "jti": exc.jti, "tenant": exc.tenant, "reason": exc.reason},
            )
            return unauthorized()
        g.jwt_iss = token.iss
        g.auth_issuer = token.iss                 # read by the feedback store
        g.jwt_jti = token.jti
        g.jwt_tenant = token.tenant
        return None


def _audience(public_base_url: str) -> str:
    """The URL the token must be minted for: PUBLIC_BASE_URL + path, or (development) the loopback request URL."""
    if public_base_url:
        # the URL as the client wrote it (percent-encoded), like request.base_url
        return public_base_url + quote(request.path, safe="/:@!$&'()*+,;=")
    host = (request.host or "").lower()
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if name not in LOOPBACK_HOSTS:
        raise AuthError("audience_unconfigured")
    return request.base_url


def unauthorized() -> Response:
    """The bare 401 of the best practices: no body, nothing about why (the reason is in our log)."""
    return Response(status=401, headers={"WWW-Authenticate": "Bearer"})
