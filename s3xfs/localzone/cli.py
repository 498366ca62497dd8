"""``s3xfs-localzone``: command line, start-up banner, signals, clean shutdown."""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
from pathlib import Path
from typing import NoReturn, TextIO

from .faults import FaultConfig
from .names import bucket_name_problem
from .principals import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, UsersFileError, default_principal, load_principals
from .server import LocalZone, Settings

LISTENING = "s3xfs-localzone listening on http://{host}:{port}"


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr (``--help`` has the rest), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _bucket(text: str) -> str:
    problem = bucket_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="s3xfs-localzone",
        description="A local S3 Express One Zone zonal endpoint: CreateSession, session tokens, directory-bucket "
                    "rules, append and RenameObject, with SigV4 verification and fault injection.",
    )
    parser.add_argument("--root", type=Path, help="storage directory (default: a temporary directory removed at exit)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=0, help="port to listen on; 0 picks a free one (default: 0)")
    parser.add_argument("--region", default="us-west-2", help="region of the endpoint and of its buckets (default: us-west-2)")
    parser.add_argument("--bucket", action="append", type=_bucket, default=[], metavar="NAME",
                        help="create this bucket at start if missing; repeatable. Names ending in --x-s3 are directory buckets")
    creds = parser.add_argument_group("credentials")
    creds.add_argument("--access-key", help=f"access key of the single principal (default: {DEFAULT_ACCESS_KEY})")
    creds.add_argument("--secret-key", help="secret key of the single principal (default: the AWS documentation example)")
    creds.add_argument("--users", type=Path, metavar="FILE",
                       help="JSON file of principals and the session modes each may create per bucket (see docs/LOCALZONE.md)")
    parser.add_argument("--session-ttl", type=_positive, default=300.0, metavar="SECONDS",
                        help="lifetime of CreateSession credentials (default: 300, as S3 Express)")
    faults = parser.add_argument_group("latency and faults (rates are probabilities per request)")
    faults.add_argument("--latency-ms", type=_non_negative, default=0.0, metavar="MS", help="first-byte delay of every response")
    faults.add_argument("--latency-jitter-ms", type=_non_negative, default=0.0, metavar="MS", help="plus a random 0..MS")
    faults.add_argument("--fault-slowdown", type=_rate, default=0.0, metavar="RATE", help="answer 503 SlowDown")
    faults.add_argument("--fault-internal-error", type=_rate, default=0.0, metavar="RATE", help="answer 500 InternalError")
    faults.add_argument("--fault-drop", type=_rate, default=0.0, metavar="RATE", help="reset the connection (before or mid-response)")
    faults.add_argument("--fault-expire-token", type=_rate, default=0.0, metavar="RATE",
                        help="expire the request's session early and answer 400 ExpiredToken")
    faults.add_argument("--fault-seed", type=int, metavar="N", help="seed for fault decisions (repeatable runs)")
    parser.add_argument("--access-log", default="-", metavar="PATH",
                        help="where the access log goes: a file, '-' for stderr (default), 'off' for nowhere")
    parser.add_argument("--expose-sessions", action="store_true",
                        help="for tests: GET /_localzone/sessions returns every session token and secret issued "
                             "(so a test can check none leaks); never on an endpoint others can reach")
    parser.add_argument("--fsync", action="store_true", help="fsync object data and the catalogue before acknowledging a write (survive power loss)")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="diagnostic log level on stderr (default: WARNING)")
    return parser


def _open_access_log(value: str) -> TextIO | None:
    if value == "off":
        return None
    if value == "-":
        return sys.stderr
    return open(value, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the process


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.users and (args.access_key or args.secret_key):
        parser.error("--users and --access-key/--secret-key are alternatives; give one or the other")
    if bool(args.access_key) != bool(args.secret_key):
        parser.error("--access-key and --secret-key go together")
    try:
        principals = load_principals(args.users) if args.users else [
            default_principal(args.access_key or DEFAULT_ACCESS_KEY, args.secret_key or DEFAULT_SECRET_KEY)]
    except UsersFileError as exc:
        parser.exit(2, f"s3xfs-localzone: error: {exc}\n")

    server: LocalZone | None = None
    stop_requested = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        # Our own handler for SIGINT too: started in the background by a script, the process
        # inherits SIGINT ignored, and Python would leave it so (`kill -INT` must still stop it).
        # A flag and a shut listener rather than an exception: the clean-up below always runs.
        stop_requested.set()
        if server is not None:
            server.stop_serving()

    # From here on SIGTERM and SIGINT make serve_forever return, then the finally below runs: exit 0,
    # temporary root removed.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    temporary = args.root is None
    root = Path(tempfile.mkdtemp(prefix="s3xfs-localzone-")) if temporary else args.root
    try:
        try:
            root.mkdir(parents=True, exist_ok=True)
            access_log = _open_access_log(args.access_log)
        except OSError as exc:
            parser.exit(2, f"s3xfs-localzone: error: {exc}\n")
        faults = FaultConfig(slowdown_rate=args.fault_slowdown, internal_error_rate=args.fault_internal_error,
                             drop_rate=args.fault_drop, expire_token_rate=args.fault_expire_token,
                             latency_ms=args.latency_ms, latency_jitter_ms=args.latency_jitter_ms)
        settings = Settings(root=root, host=args.host, port=args.port, region=args.region, buckets=args.bucket,
                            principals=principals, session_ttl=args.session_ttl, faults=faults,
                            fault_seed=args.fault_seed, access_log=access_log, fsync=args.fsync,
                            expose_sessions=args.expose_sessions)
        try:
            server = LocalZone(settings)
        except (OSError, sqlite3.Error, RuntimeError, ValueError) as exc:
            parser.exit(2, f"s3xfs-localzone: error: cannot open the storage root {root}: {exc}\n")
        try:
            host, port = server.bind()
        except OSError as exc:
            parser.exit(2, f"s3xfs-localzone: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}\n")
        print(LISTENING.format(host=host, port=port), flush=True)
        if args.users:
            print(f"principals: {len(principals)} from {args.users}")
        else:
            print(f"access key: {principals[0].access_key}")
            print(f"secret key: {principals[0].secret_key}")
        print(f"region: {args.region}")
        print(f"root: {root}{' (temporary)' if temporary else ''}")
        for name in args.bucket:
            print(f"bucket: {name}")
        sys.stdout.flush()
        if not stop_requested.is_set():  # a signal during start-up: do not start serving
            server.serve_forever()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not interrupt the clean-up
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if server is not None:
            server.shutdown()
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    return 0
