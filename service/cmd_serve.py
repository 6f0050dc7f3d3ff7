"""`msk-cds serve`: run the service with Flask's development server on the embedded SQLite default."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger("msk_cds.cli")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument(
        "--dev-no-auth", action="store_true",
        help="development only: accept calls without a JWT (same as AUTH_DISABLED=true)",
    )
    parser.add_argument("--production", action="store_true",
                        help="serve with gunicorn (service/gunicorn_conf.py): several workers, metrics across them")
    parser.add_argument("--workers", type=int, help="--production: worker processes (default WEB_CONCURRENCY or 2xCPU+1)")
    parser.add_argument("--bind", help="--production: address to listen on (default 0.0.0.0:$PORT, PORT=8080)")


def settings_from(args: argparse.Namespace) -> dict:
    settings: dict = {}
    if args.dev_no_auth:
        settings["AUTH_DISABLED"] = True
    return settings


def run(args: argparse.Namespace) -> int:
    if args.production:
        from service import production

        if args.dev_no_auth:
            log.warning("--dev-no-auth is ignored with --production; set AUTH_DISABLED explicitly")
        production.serve(workers=args.workers, bind=args.bind)     # replaces this process with gunicorn
    from service import create_app

    app = create_app(settings_from(args))
    if args.dev_no_auth:
        log.warning("--dev-no-auth: authentication is DISABLED; never use this with real patient data")
    app.run(host=args.host, port=args.port, threaded=True, use_reloader=False, debug=False)
    return 0
