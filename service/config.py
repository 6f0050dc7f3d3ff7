"""Settings of the service: every name is both an environment variable and a `create_app` mapping key.

A mapping passed to `create_app` wins over the environment, which wins over the defaults below. Values are
parsed once at start-up; a bad value stops start-up naming the setting (never echoing the value).
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping


class ConfigError(ValueError):
    """A setting has a value the service cannot use."""


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    number = int(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError("must be a positive number")
    return number


def as_str(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)


def as_instant(value: Any) -> dt.datetime | None:
    """An ISO datetime (timezone-aware; UTC when no zone is given)."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        parsed = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def as_url_list(value: Any) -> tuple[str, ...]:
    """Comma-separated absolute http(s) base URLs in canonical form (service.fhirurl: lower-case scheme and host,
    no default port, no trailing slash; dot segments, parameters and credentials refused)."""
    from service.fhirurl import UnsafeUrl, canonical_base_url

    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            out.append(canonical_base_url(text))
        except UnsafeUrl as exc:
            raise ValueError(f"each URL {exc}") from None
    return tuple(out)


def as_timezone(value: Any) -> str:
    """An IANA time zone name that exists on this machine."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = str(value).strip()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown time zone") from None
    return name


def as_raw(value: Any) -> Any:
    """Kept as given; the module that owns the setting interprets it."""
    return value


def default_database_url() -> str:
    return f"sqlite:///{Path.cwd() / 'instance' / 'msk_cds.sqlite3'}"


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    doc: str


# One line per setting. Other modules add theirs here (and a row in the README's configuration table).
SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", None, as_str, "SQLAlchemy URL; default SQLite file instance/msk_cds.sqlite3"),
    Setting("MAX_REQUEST_BYTES", 5 * 1024 * 1024, as_int, "largest accepted request body (413 above)"),
    Setting("MAX_JSON_DEPTH", 64, as_int, "deepest accepted JSON nesting (400 above)"),
    Setting("FHIR_FETCH_DEADLINE_SECONDS", 4.0, as_float, "one deadline for all FHIR reads of a request"),
    Setting("FHIR_MAX_PAGES", 10, as_int, "searchset pages followed per prefetch key"),
    Setting("FHIR_FETCH_WORKERS", 4, as_int, "threads fetching missing prefetch keys concurrently"),
    Setting("FHIR_MAX_RESPONSE_BYTES", 20 * 1024 * 1024, as_int, "largest FHIR response page read"),
    Setting("FHIR_SERVER_ALLOWLIST", (), as_url_list,
            "comma-separated fhirServer base URLs the service may read from (production refuses to start without it)"),
    Setting("FHIR_SERVER_ALLOW_ANY", False, as_bool,
            "explicit opt-out of the allowlist: read from any fhirServer (production starts without an allowlist)"),
    Setting("FHIR_ALLOW_INSECURE_HTTP", False, as_bool,
            "development only: accept fhirAuthorization with an http:// fhirServer (else 400; a warning per call)"),
    Setting("AUTH_DISABLED", False, as_bool, "development only: accept calls without a JWT"),
    Setting("TRUSTED_ISSUERS", None, as_raw, "JSON: trusted JWT issuers and their keys"),
    Setting("TRUSTED_ISSUERS_FILE", None, as_str, "path of a JSON or YAML file with the trusted issuers"),
    Setting("PUBLIC_BASE_URL", None, as_str, "external base URL (JWT audience)"),
    Setting("JWT_LEEWAY_SECONDS", 30, as_int, "clock skew allowed on JWT exp/iat"),
    Setting("JWT_MAX_LIFETIME_SECONDS", 3600, as_int, "longest accepted JWT lifetime left (exp - now)"),
    Setting("JWKS_CACHE_SECONDS", 300, as_int, "how long a fetched JWK Set is trusted before re-fetch"),
    Setting("JWKS_REFETCH_MIN_SECONDS", 30, as_int, "least time between JWK Set fetches per URL (unknown kid)"),
    Setting("JWKS_FETCH_TIMEOUT_SECONDS", 3.0, as_float, "timeout of one JWK Set fetch"),
    Setting("CORS_ALLOW_ORIGIN", "*", as_str, "Access-Control-Allow-Origin value"),
    Setting("FIXED_NOW", None, as_instant, "tests and fixtures only: evaluation time handed to hooks"),
    Setting("LOG_LEVEL", "INFO", as_str, "log level"),
    Setting("SUPPRESS_OVERRIDDEN_CARDS", False, as_bool, "hide cards the user overrode before"),
    Setting("METRICS_ENABLED", True, as_bool, "serve Prometheus metrics at /metrics"),
    Setting("METRICS_TOKEN", None, as_str,
            "bearer token /metrics requires (production refuses to start with metrics on and no token)"),
    Setting("EVALUATION_BUDGET_SECONDS", 5.0, as_float,
            "deadline of one call's clinical evaluation; past it, older reports are left unread and named on a card"),
    Setting("EVALUATION_MAX_REPORT_CHARS", 1_500_000, as_int,
            "report text analysed per call, newest reports first; the rest is left unread and named on a card"),
    Setting("PRODUCTION", False, as_bool,
            "refuse unsafe settings at start-up (set by `msk-cds serve --production` and the gunicorn config)"),
    Setting("DB_CONNECT_TIMEOUT_SECONDS", 3.0, as_float, "time to open a database connection"),
    Setting("DB_STATEMENT_TIMEOUT_SECONDS", 5.0, as_float,
            "longest database statement (PostgreSQL statement_timeout; SQLite busy timeout)"),
    Setting("DB_POOL_TIMEOUT_SECONDS", 2.0, as_float, "wait for a free pooled connection"),
    Setting("NO_REPEAT_WINDOW_HOURS", 24.0, as_float, "order-sign withholds cards shown at order-select this recently"),
    Setting("OVERRIDE_SUPPRESSION_DAYS", 30.0, as_float, "how long SUPPRESS_OVERRIDDEN_CARDS remembers an override"),
    Setting("EHR_LOCAL_TIMEZONE", "UTC", as_timezone,
            "IANA time zone in which date-times the EHR sends without a zone are read (each one is recorded)"),
    Setting("INTAKE_DIAGNOSTICS_EXTENSION", False, as_bool,
            "integrators: add the call's FHIR repairs and drops (counts by type and element path) to the response"),
    Setting("LEDGER_SALT", None, as_str, "key for patient/user pseudonyms in the card ledger (default: one per database)"),
    Setting("EXPLANATION_LINKS", False, as_bool,
            "add a \"Why this card?\" link to each card (a page explaining the rule and its evidence, no patient data)"),
    Setting("EXPLANATION_SECRET", None, as_str, "key (32+ characters) signing the explanation links; needed with them"),
    Setting("EXPLANATION_TTL_SECONDS", 900, as_int, "how long an explanation link stays valid"),
)


#: Secrets an operator mounts as files (Kubernetes Secret volume, Docker/compose secrets): NAME_FILE names a file
#: whose content (one trailing newline dropped) is the value, the convention of the official Docker images.
SECRET_FILE_SETTINGS = ("DATABASE_URL", "METRICS_TOKEN", "LEDGER_SALT", "EXPLANATION_SECRET")


def _secret_from_file(name: str, environ: Mapping[str, str]) -> str | None:
    path = environ.get(f"{name}_FILE")
    if not path:
        return None
    if environ.get(name):
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"setting {name}_FILE: cannot read {path} ({exc.__class__.__name__})") from None
    return text[:-1] if text.endswith("\n") else text


#: the smallest METRICS_TOKEN accepted: a short token is guessable over the network
MIN_METRICS_TOKEN_CHARS = 16


def production_problems(settings: Mapping[str, Any]) -> list[str]:
    """What makes these settings unsafe to serve real patients with (empty when they are fine)."""
    problems = []
    auth_on = not settings.get("AUTH_DISABLED")
    if auth_on and not settings.get("PUBLIC_BASE_URL"):
        problems.append("PUBLIC_BASE_URL is required with authentication on (it is the JWT audience; the Host "
                        "header is the caller's choice)")
    if not settings.get("FHIR_SERVER_ALLOWLIST") and not settings.get("FHIR_SERVER_ALLOW_ANY"):
        problems.append("FHIR_SERVER_ALLOWLIST is required (the fhirServer URLs the service may read from; "
                        "FHIR_SERVER_ALLOW_ANY=true is the explicit opt-out)")
    if settings.get("METRICS_ENABLED", True):
        token = settings.get("METRICS_TOKEN") or ""
        if len(token) < MIN_METRICS_TOKEN_CHARS:
            problems.append(f"METRICS_TOKEN of at least {MIN_METRICS_TOKEN_CHARS} characters is required while "
                            "METRICS_ENABLED is true")
    return problems


def check_production(settings: Mapping[str, Any]) -> None:
    """With PRODUCTION on, refuse to start on unsafe settings: one ConfigError naming every problem."""
    if not settings.get("PRODUCTION"):
        return
    problems = production_problems(settings)
    if problems:
        raise ConfigError("refusing to start in production: " + "; ".join(problems))


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> dict:
    """Resolve every setting (mapping > environment > default). Unknown mapping keys pass through unchanged
    (e.g. Flask's TESTING)."""
    overrides = dict(overrides or {})
    environ = os.environ if environ is None else environ
    resolved: dict[str, Any] = {}
    for setting in SETTINGS:
        from_file = _secret_from_file(setting.name, environ) if setting.name in SECRET_FILE_SETTINGS else None
        if setting.name in overrides:
            raw = overrides.pop(setting.name)
        elif from_file is not None:
            raw = from_file
        elif setting.name in environ:
            raw = environ[setting.name]
        else:
            raw = setting.default
        if raw is None:
            resolved[setting.name] = None
            continue
        try:
            resolved[setting.name] = setting.parse(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"setting {setting.name}: {exc.__class__.__name__}: invalid value") from None
    if not resolved.get("DATABASE_URL"):
        resolved["DATABASE_URL"] = default_database_url()
    resolved.update(overrides)
    return resolved


SERVICES_EXTENSION = "msk_cds.services"


def service_registry(app: Any = None) -> Any:
    """The app's hooks.registry.ServiceRegistry (handed to create_app); the current app's when none is given."""
    if app is None:
        from flask import current_app

        app = current_app
    return app.extensions[SERVICES_EXTENSION]
