"""`msk-cds serve`: run the service with Flask's development server on the embedded SQLite default, or with
gunicorn (`--production`). The listening address is checked before anything starts, so a port in use is one line."""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

log = logging.getLogger("msk_cds.cli")


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {port}")
    return port


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=8080, help="port (default 8080; 0 picks a free one)")
    parser.add_argument(
        "--dev-no-auth", action="store_true",
        help="development only: accept calls without a JWT (same as AUTH_DISABLED=true)",
    )
    parser.add_argument("--production", action="store_true",
                        help="serve with gunicorn (service/gunicorn_conf.py): several workers, metrics across them")
    parser.add_argument("--workers", type=positive_int,
                        help="--production: worker processes (default WEB_CONCURRENCY or 2xCPU+1)")
    parser.add_argument("--bind", help="--production: address to listen on (default 0.0.0.0:$PORT, PORT=8080)")


def settings_from(args: argparse.Namespace) -> dict:
    settings: dict = {}
    if args.dev_no_auth:
        settings["AUTH_DISABLED"] = True
    return settings


def production_bind(bind: str | None) -> str:
    """The address gunicorn will listen on, the way service/gunicorn_conf.py chooses it."""
    return bind or os.environ.get("BIND") or f"0.0.0.0:{os.environ.get('PORT', '8080')}"


def check_address_free(bind: str) -> None:
    """Bind and release `host:port` (as gunicorn will, with SO_REUSEADDR); raises OSError naming the address when
    it is taken or not ours, before gunicorn starts (it would retry five times and print a line per try)."""
    if bind.startswith(("unix:", "fd://")):
        return
    host, sep, port_text = bind.rpartition(":")
    if not sep:
        host, port_text = bind, "8000"
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise OSError(0, f"--bind is not HOST:PORT: {bind}") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(0, f"cannot resolve {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {bind}: {exc.strerror}") from None


def run(args: argparse.Namespace) -> int:
    if args.production:
        from service import production

        if args.dev_no_auth:
            log.warning("--dev-no-auth is ignored with --production; set AUTH_DISABLED explicitly")
        from service.config import load_settings

        load_settings()                      # a bad setting is one line here, not a traceback from gunicorn's master
        check_address_free(production_bind(args.bind))
        production.serve(workers=args.workers, bind=args.bind)     # replaces this process with gunicorn
    from werkzeug.serving import make_server

    from service import create_app

    host = f"[{args.host}]" if ":" in args.host else args.host
    if args.port:
        check_address_free(f"{host}:{args.port}")        # before the warm-up, and one line instead of werkzeug's
    app = create_app(settings_from(args))
    if args.dev_no_auth:
        log.warning("--dev-no-auth: authentication is DISABLED; never use this with real patient data")
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except SystemExit:
        # werkzeug prints its own explanation (port in use) and exits; say it in our one line instead
        raise OSError(0, f"cannot listen on {host}:{args.port}: address already in use") from None
    # werkzeug's own "Running on" line is silenced with its access log (URLs carry patient ids): say it here.
    print(f"msk-cds: serving on http://{host}:{server.server_port}/cds-services (development server; "
          "Ctrl+C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
