"""Gunicorn settings for production serving (`msk-cds serve --production` loads this as `python:service.gunicorn_conf`).

Shipped inside the package so an installed (non-editable) service finds it; deploy/gunicorn.conf.py re-exports it
for those who run gunicorn by hand. Every value can be overridden on gunicorn's command line or GUNICORN_CMD_ARGS.
"""
from __future__ import annotations

import atexit
import gc
import glob
import os
import shutil
import tempfile

from service.production import WSGI_APP, default_workers, request_timeout


def _remove_if_master(path: str, master_pid: int) -> None:
    if os.getpid() == master_pid:
        shutil.rmtree(path, ignore_errors=True)


def _prepare_multiprocess_dir() -> str:
    """prometheus_client multiprocess mode needs the directory in the environment before it is imported (the app
    is loaded after this file). A directory given by the operator is emptied once per master start."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="msk-cds-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        os.environ["_MSK_CDS_METRICS_DIR_TEMPORARY"] = path      # ours to remove in on_exit
        # on_exit runs only after a clean start; a failed bind or app load ends the master with sys.exit, so the
        # directory is also removed at exit of this (master) process. Forked workers inherit the hook: pid check.
        atexit.register(_remove_if_master, path, os.getpid())
    elif os.environ.get("_MSK_CDS_METRICS_DIR_OWNER") != str(os.getpid()):
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
    # Reloading this file on SIGHUP must not wipe the live workers' samples.
    os.environ["_MSK_CDS_METRICS_DIR_OWNER"] = str(os.getpid())
    return path


metrics_dir = _prepare_multiprocess_dir()

wsgi_app = WSGI_APP
bind = [os.environ.get("BIND", f"0.0.0.0:{os.environ.get('PORT', '8080')}")]
workers = default_workers()
# gthread workers (service/gunicorn_worker.py): a pool of threads per process, idle keep-alive connections parked in
# a poller, and a deadline on each connection's headers (GUNICORN_HEADER_TIMEOUT) and whole exchange
# (GUNICORN_REQUEST_DEADLINE), so slow-header or slow-reading clients hold a thread for a bounded time and cannot
# starve the workers (sync workers gave each slow client a whole process). Gunicorn's own 400/414/431 answers are
# JSON and its log lines never quote the request line. The rules are CPU-bound and the NLP pipeline is locked per
# process, so threads add no parallelism for them; they keep /healthz and light calls moving beside heavy ones.
worker_class = "service.gunicorn_worker.JsonErrorThreadWorker"
threads = max(1, int(os.environ.get("GUNICORN_THREADS", "8") or 8))
worker_connections = 1000
timeout = request_timeout()
graceful_timeout = 30
keepalive = 5
# Load the app (knowledge base, FHIR models, NLP pipeline, warm-up) once in the master; workers share it by fork.
preload_app = True
# Workers are recycled after about this many requests (with 10% jitter so they do not all restart together): caches
# are bounded, but whatever a long-lived process still accretes (allocator fragmentation, per-text caches) is handed
# back. The preloaded app makes a new worker a cheap fork. 0 turns recycling off.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "5000") or 0)
max_requests_jitter = max(0, max_requests // 10)
accesslog = None            # the app logs each call itself, without PHI; gunicorn's access log would carry URLs
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
worker_tmp_dir = os.environ.get("GUNICORN_WORKER_TMP_DIR") or None
proc_name = "msk-cds"
# gunicorn 25+ opens a control socket at a fixed path under $HOME by default: two servers on one host would collide,
# and a read-only root has no writable $HOME. Workers are managed by the orchestrator, not at runtime.
control_socket_disable = True


def when_ready(server) -> None:
    server.log.info("msk-cds ready: %s workers, timeout %ss, metrics in %s", server.cfg.workers, server.cfg.timeout,
                    os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def pre_fork(server, worker) -> None:
    """Move everything the preload built (knowledge, FHIR model classes, NLP pipeline) to the GC's permanent
    generation: workers' full collections then skip it, and its pages stay shared instead of copied on write."""
    gc.freeze()


def post_fork(server, worker) -> None:
    """Connections opened in the master (warm-up, table creation) must not be shared by the forked workers."""
    app = worker.app.wsgi()
    storage = getattr(app, "extensions", {}).get("msk_cds.storage")
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose(close=False)


def on_exit(server) -> None:
    temporary = os.environ.get("_MSK_CDS_METRICS_DIR_TEMPORARY")
    if temporary and temporary == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(temporary, ignore_errors=True)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
