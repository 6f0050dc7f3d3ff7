"""Production serving: `msk-cds serve --production` replaces itself with gunicorn configured by service.gunicorn_conf."""
from __future__ import annotations

import os
import sys

CONFIG_MODULE = "python:service.gunicorn_conf"


def gunicorn_argv(workers: int | None = None, bind: str | None = None) -> list[str]:
    """The gunicorn command line; explicit options win over the config module's defaults."""
    argv = [sys.executable, "-m", "gunicorn", "--config", CONFIG_MODULE]
    if workers:
        argv += ["--workers", str(int(workers))]
    if bind:
        argv += ["--bind", bind]
    argv.append("service:create_app()")
    return argv


def serve(workers: int | None = None, bind: str | None = None) -> None:
    """Exec gunicorn so it becomes the process signals go to (container PID 1, systemd) and loads the config
    before prometheus_client is first imported."""
    argv = gunicorn_argv(workers, bind)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
