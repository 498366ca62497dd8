"""Log destinations, levels, run-time level changes and redaction (s3xfs/logs.py)."""

from __future__ import annotations

import logging
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3xfs import logs

SESSION_TOKEN = "AgoJb3JpZ2luX2VjEJr" + "x" * 100
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("s3xfs", "botocore", "s3xfs.client")}
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            if handler not in handlers:
                handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, value in levels.items():
            logging.getLogger(name).setLevel(value)


@pytest.mark.parametrize("text, secret", [
    # botocore's DEBUG dump of a prepared request
    (f"headers={{'x-amz-s3session-token': b'{SESSION_TOKEN}', 'X-Amz-Date': b'20261122T000000Z'}}", SESSION_TOKEN),
    (f"{{'X-Amz-Security-Token': '{SESSION_TOKEN}'}}", SESSION_TOKEN),
    # CreateSession's response body
    (f"b'<Credentials><SessionToken>{SESSION_TOKEN}</SessionToken><SecretAccessKey>{SECRET}</SecretAccessKey>'", SECRET),
    (f"<SessionToken>{SESSION_TOKEN}</SessionToken>", SESSION_TOKEN),
    # the parsed response and credential objects
    (f"{{'Credentials': {{'SecretAccessKey': '{SECRET}', 'SessionToken': '{SESSION_TOKEN}'}}}}", SECRET),
    (f'{{"secret_key": "{SECRET}"}}', SECRET),
    # presigned URLs and raw headers
    (f"GET /k?X-Amz-Security-Token={SESSION_TOKEN}&X-Amz-Signature=abc123", SESSION_TOKEN),
    (f"x-amz-s3session-token: {SESSION_TOKEN}\r\nhost: b", SESSION_TOKEN),
    ("Authorization: AWS4-HMAC-SHA256 Credential=AKID/20261122/us-west-2/s3express/aws4_request, "
     "SignedHeaders=host, Signature=" + "ab12" * 16, "ab12" * 16),
    (f"aws_secret_access_key = {SECRET}", SECRET),
])
def test_redact_removes_every_form_of_a_secret(text, secret):
    cleaned = logs.redact(text)
    assert secret not in cleaned
    assert logs.REDACTED in cleaned


def test_redact_keeps_ordinary_text_and_removes_literal_secrets():
    text = "GET data/token_report.csv: 200, SessionMode ReadOnly, Credential=AKIDEXAMPLE/20261122"
    assert logs.redact(text) == text
    assert logs.redact(f"oops {SECRET} leaked", frozenset({SECRET})) == f"oops {logs.REDACTED} leaked"


def test_formatter_redacts_exceptions_too():
    formatter = logs.RedactingFormatter("%(message)s")
    try:
        raise RuntimeError(f"request failed: {{'x-amz-s3session-token': '{SESSION_TOKEN}'}}")
    except RuntimeError:
        record = logging.LogRecord("s3xfs.client", logging.ERROR, __file__, 1, "failed", None, exc_info=True)
        import sys
        record.exc_info = sys.exc_info()
    text = formatter.format(record)
    assert "RuntimeError" in text and SESSION_TOKEN not in text


def test_environment_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "short")
    assert logs.environment_secrets() == frozenset({SECRET})


def test_parse_debug_modules():
    assert logs.parse_debug_modules("s3xfs.client:botocore") == ("s3xfs.client", "botocore")
    assert logs.parse_debug_modules("s3xfs.core, urllib3") == ("s3xfs.core", "urllib3")
    assert logs.parse_debug_modules(None) == ()
    with pytest.raises(ValueError, match="not 's3xfs/client'"):
        logs.parse_debug_modules("s3xfs/client")


def test_levels_third_parties_stay_quiet_unless_named(restore_logging):
    control = logs.LogControl("DEBUG", ("botocore",))
    assert logging.getLogger("s3xfs.core.fs").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("botocore.endpoint").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("urllib3").isEnabledFor(logging.INFO)
    control = logs.LogControl("WARNING", ())
    assert not logging.getLogger("s3xfs.core").isEnabledFor(logging.INFO)
    assert control.more_verbose() == "INFO"
    assert logging.getLogger("s3xfs.core").isEnabledFor(logging.INFO)
    assert control.more_verbose() == "DEBUG"
    assert control.more_verbose() == "DEBUG"  # the floor
    assert control.restore() == "WARNING"
    assert not logging.getLogger("s3xfs.core").isEnabledFor(logging.INFO)


def test_log_file_is_private_and_redacted(tmp_path, restore_logging):
    path = tmp_path / "s3xfs.log"
    logs.setup("INFO", (), path, detached=True)
    logging.getLogger("s3xfs.client").info("sent %s", {"x-amz-s3session-token": SESSION_TOKEN})
    logging.getLogger("s3xfs.client").debug("not at INFO")
    text = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "s3xfs.client: sent" in text and SESSION_TOKEN not in text and "not at INFO" not in text


def test_journal_handler_speaks_the_native_protocol(tmp_path):
    address = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
        journal.bind(address)
        journal.settimeout(5)
        handler = logs.JournalHandler(address)
        handler.setFormatter(logs.RedactingFormatter("%(message)s"))
        try:
            handler.handle(logging.LogRecord("s3xfs.core.fs", logging.WARNING, "/x/fs.py", 7, "one", None, None))
            handler.handle(logging.LogRecord("s3xfs.core.fs", logging.ERROR, "/x/fs.py", 8, "two\nlines", None, None))
            first, second = journal.recv(65536), journal.recv(65536)
        finally:
            handler.close()
    fields = dict(line.split(b"=", 1) for line in first.rstrip(b"\n").split(b"\n"))
    assert fields[b"MESSAGE"] == b"one" and fields[b"PRIORITY"] == b"4"
    assert fields[b"SYSLOG_IDENTIFIER"] == b"s3xfs" and fields[b"S3XFS_LOGGER"] == b"s3xfs.core.fs"
    assert fields[b"CODE_LINE"] == b"7"
    # a value with a newline uses the binary form: NAME\n, 64-bit little-endian length, value\n
    assert second.startswith(b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\nPRIORITY=3\n")
