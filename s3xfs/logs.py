"""Where the daemon's log goes, at which levels, and the guarantee that no secret reaches it.

- ``--log-file``: that file (created 0600).
- Foreground: stderr, unless stderr is systemd's journal stream (``Type=notify`` units), then the
  journal directly, so priorities survive.
- Detached: the journal (native protocol) when journald runs, else syslog (``/dev/log``), always
  under the identifier ``s3xfs``; on a host with neither, only ``--log-file`` keeps a log.

``--log-level`` applies to s3xfs's own loggers; third-party libraries stay at WARNING or above
(botocore's DEBUG dumps every request) unless named in ``--debug``. SIGUSR1 makes s3xfs one level
more verbose at run time, SIGUSR2 restores the configured levels.

Every handler formats through :class:`RedactingFormatter`: header, XML and dict values that carry
credentials, signatures or session tokens are replaced, and so are the literal secrets of the
environment, whatever logger or exception produced the text.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import socket
import struct
import sys
from pathlib import Path

IDENTIFIER = "s3xfs"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_SOCKET = "/dev/log"
JOURNAL_MAX_MESSAGE = 48 * 1024  # well under a datagram's limit; longer messages need memfd passing
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
REDACTED = "<redacted>"

# Names whose values are secret wherever they appear: headers, query strings, dicts, XML, env.
_SECRET_NAMES = (r"x-amz-security-token|x-amz-s3session-token|x-amz-signature|secretaccesskey|sessiontoken"
                 r"|secret_access_key|secret_key|session_token|aws_secret_access_key|aws_session_token")
_PATTERNS = (
    re.compile(rf"(<({_SECRET_NAMES})>)[^<]*(</)", re.IGNORECASE),  # XML: <SessionToken>...</SessionToken>
    re.compile(rf"((['\"]?)(?:{_SECRET_NAMES})\2\s*:\s*b?(['\"]))[^'\"]*(['\"])", re.IGNORECASE),  # reprs, JSON
    re.compile(rf"((?<![\w-])(?:{_SECRET_NAMES})\s*[=:]\s*)(?!['\"<])[^\s&,;'\"}}]+", re.IGNORECASE),  # k=v, headers
    re.compile(r"(Signature=)[0-9a-fA-F]{16,}"),  # SigV4 Authorization header
)


def redact(text: str, secrets: frozenset[str] = frozenset()) -> str:
    """``text`` with every credential value replaced by ``<redacted>``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _PATTERNS[0].sub(rf"\1{REDACTED}\3", text)
    text = _PATTERNS[1].sub(rf"\1{REDACTED}\4", text)
    text = _PATTERNS[2].sub(rf"\1{REDACTED}", text)
    return _PATTERNS[3].sub(rf"\1{REDACTED}", text)


def environment_secrets() -> frozenset[str]:
    """Literal secrets the process was given (long enough not to redact ordinary words)."""
    values = (os.environ.get(name, "") for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
    return frozenset(value for value in values if len(value) >= 8)


class RedactingFormatter(logging.Formatter):
    """Formats as usual (message, exception, stack), then redacts the whole text."""

    def __init__(self, fmt: str, secrets: frozenset[str] = frozenset()) -> None:
        super().__init__(fmt)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


class JournalHandler(logging.Handler):
    """systemd's native journal protocol: one datagram of FIELD=value lines per record."""

    PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self, address: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)[:JOURNAL_MAX_MESSAGE]
            fields = {
                "MESSAGE": message, "PRIORITY": str(self.PRIORITIES.get(record.levelno, 6)),
                "SYSLOG_IDENTIFIER": IDENTIFIER, "SYSLOG_PID": str(os.getpid()), "S3XFS_LOGGER": record.name,
                "CODE_FILE": record.pathname or "", "CODE_LINE": str(record.lineno), "CODE_FUNC": record.funcName or "",
            }
            self.sock.sendto(b"".join(_journal_field(name, value) for name, value in fields.items()), self.address)
        except Exception:  # noqa: BLE001 - logging must never take the daemon down
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def _journal_field(name: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" in data:  # the protocol's binary form: NAME\n, 64-bit little-endian length, value
        return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


def _stderr_is_journal() -> bool:
    """Whether stderr is the journal stream systemd connected (it sets JOURNAL_STREAM=dev:inode)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(2)
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


def parse_debug_modules(text: str | None) -> tuple[str, ...]:
    """``s3xfs.client:botocore`` (or commas on the command line) -> the logger names; ValueError if malformed."""
    if not text:
        return ()
    names = tuple(name.strip() for name in re.split(r"[:,]", text) if name.strip())
    for name in names:
        if not MODULE_NAME.fullmatch(name):
            raise ValueError(f"--debug takes module names like s3xfs.client or botocore, not {name!r}")
    return names


class LogControl:
    """The configured levels, and their change at run time (SIGUSR1/SIGUSR2)."""

    def __init__(self, level: str, debug_modules: tuple[str, ...]) -> None:
        self.level = logging.getLevelName(level)
        self.debug_modules = debug_modules
        self.current = self.level
        self.apply(self.level)

    def apply(self, level: int) -> None:
        self.current = level
        logging.getLogger().setLevel(max(level, logging.WARNING))  # third parties: WARNING or above
        logging.getLogger(IDENTIFIER).setLevel(level)
        for name in self.debug_modules:
            logging.getLogger(name).setLevel(logging.DEBUG)

    def more_verbose(self) -> str:
        """One level down (WARNING -> INFO -> DEBUG); returns the new level's name."""
        self.apply(max(logging.DEBUG, self.current - 10))
        return logging.getLevelName(self.current)

    def restore(self) -> str:
        self.apply(self.level)
        return logging.getLevelName(self.current)


def setup(level: str, debug_modules: tuple[str, ...], log_file: Path | None, detached: bool) -> LogControl:
    """Install the one handler this process logs through; returns the level control."""
    secrets = environment_secrets()
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler: logging.Handler
    if log_file is not None:
        descriptor = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        handler = logging.StreamHandler(os.fdopen(descriptor, "a", buffering=1, encoding="utf-8"))
    elif (detached or _stderr_is_journal()) and Path(JOURNAL_SOCKET).exists():
        handler = JournalHandler()
        fmt = "%(levelname)s %(name)s: %(message)s"
    elif detached and Path(SYSLOG_SOCKET).exists():
        handler = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET)
        handler.ident = f"{IDENTIFIER}[{os.getpid()}]: "
        fmt = "%(levelname)s %(name)s: %(message)s"
    elif detached:
        handler = logging.NullHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(fmt, secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    logging.captureWarnings(True)
    return LogControl(level, debug_modules)
