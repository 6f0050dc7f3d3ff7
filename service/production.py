"""Production serving: `msk-cds serve --production` replaces itself with gunicorn configured by service.gunicorn_conf."""
from __future__ import annotations

import math
import os
import sys

CONFIG_MODULE = "python:service.gunicorn_conf"
WSGI_APP = "service.production:production_app()"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _float_env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def default_workers(cpus: int | None = None) -> int:
    """WEB_CONCURRENCY when set, else 2 x CPU + 1 capped at 8 (each worker holds the knowledge base and NLP model)."""
    configured = os.environ.get("WEB_CONCURRENCY", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return min(2 * (cpus or _cpu_count()) + 1, 8)


def request_timeout(deadline_seconds: float | None = None) -> int:
    """Worker timeout: the FHIR fetch deadline plus room for the rules and the database, never below 30 s, so a
    slow FHIR server ends in our own 412/504 answer rather than a killed worker."""
    deadline = deadline_seconds if deadline_seconds is not None else _float_env("FHIR_FETCH_DEADLINE_SECONDS", 4.0)
    return max(30, int(math.ceil(deadline)) + 26)


def gunicorn_argv(workers: int | None = None, bind: str | None = None) -> list[str]:
    """The gunicorn command line; explicit options win over the config module's defaults."""
    argv = [sys.executable, "-m", "gunicorn", "--config", CONFIG_MODULE]
    if workers:
        argv += ["--workers", str(int(workers))]
    if bind:
        argv += ["--bind", bind]
    argv.append(WSGI_APP)
    return argv


def production_app():
    """The app gunicorn serves: PRODUCTION on unless the environment says otherwise; unsafe settings stop start-up
    with one line on stderr naming every problem (no traceback) and exit status 2."""
    from service import create_app
    from service.config import ConfigError

    os.environ.setdefault("PRODUCTION", "true")
    try:
        return create_app()
    except ConfigError as exc:
        sys.stderr.write(f"msk-cds: {exc}\n")
        sys.stderr.flush()
        raise SystemExit(2) from None


def serve(workers: int | None = None, bind: str | None = None) -> None:
    """Exec gunicorn so it becomes the process signals go to (container PID 1, systemd) and loads the config
    before prometheus_client is first imported."""
    argv = gunicorn_argv(workers, bind)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
