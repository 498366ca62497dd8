"""Request counters (served at ``GET /_localzone/stats``) and the access log."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import TextIO
from urllib.parse import quote

# Operations that change data: a read-only client must never send one (tests check this).
MUTATING_OPERATIONS = frozenset(
    {
        "PutObject", "CopyObject", "DeleteObject", "DeleteObjects", "RenameObject",
        "CreateMultipartUpload", "UploadPart", "UploadPartCopy", "CompleteMultipartUpload",
        "AbortMultipartUpload", "CreateBucket", "DeleteBucket",
    }
)


class Stats:
    """Counters shared by all connection threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests: Counter[str] = Counter()
            self.sessions: Counter[str] = Counter()
            self.statuses: Counter[str] = Counter()
            self.errors: Counter[str] = Counter()
            self.faults: Counter[str] = Counter()
            self.bytes_in = 0
            self.bytes_out = 0
            self.started = time.time()

    def record(self, operation: str, status: int, error_code: str | None, bytes_in: int, bytes_out: int) -> None:
        with self._lock:
            self.requests[operation] += 1
            self.statuses[str(status)] += 1
            if error_code:
                self.errors[error_code] += 1
            self.bytes_in += bytes_in
            self.bytes_out += bytes_out

    def add_bytes_out(self, delta: int) -> None:
        """Correct bytes_out when a response was cut short after it was recorded."""
        with self._lock:
            self.bytes_out += delta

    def session_created(self, mode: str) -> None:
        with self._lock:
            self.sessions[mode] += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "sessions": {"ReadOnly": self.sessions["ReadOnly"], "ReadWrite": self.sessions["ReadWrite"]},
                "statuses": dict(self.statuses),
                "errors": dict(self.errors),
                "faults": dict(self.faults),
                "mutating_requests": sum(n for op, n in self.requests.items() if op in MUTATING_OPERATIONS),
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "since": self.started,
            }


class AccessLog:
    """One line per request: time, client, operation, bucket, key, status, session mode, ms, bytes.

    Fields are tab-separated and the key is percent-encoded, so every line parses with
    ``line.split('\\t')`` whatever the key contains. Credentials never appear.
    """

    FIELDS = ("time", "client", "operation", "bucket", "key", "status", "error", "mode", "ms", "bytes_in", "bytes_out")

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, client: str, operation: str, bucket: str, key: str, status: int, error: str | None,
              mode: str, elapsed: float, bytes_in: int, bytes_out: int) -> None:
        if self._stream is None:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        line = "\t".join(
            (stamp, client, operation, bucket or "-", quote(key, safe="/") if key else "-", str(status),
             error or "-", mode or "-", f"{elapsed * 1000:.1f}", str(bytes_in), str(bytes_out))
        )
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()
