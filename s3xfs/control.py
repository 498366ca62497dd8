"""The daemon's control socket: how ``s3xfs stats MOUNTPOINT`` asks a running mount for its counters.

Transport: a Unix stream socket in the Linux *abstract* namespace, named after the mount point
(:func:`socket_address`: ``"\\0s3xfs/"`` + the first 32 hex digits of the SHA-256 of its real path).
An abstract name is no file: nothing to clean up, and a killed daemon leaves nothing behind (the
kernel drops the name with the last descriptor). If the name is taken (another daemon serves the
same path) the mount runs without stats, with a warning; the mount itself never fails for it.

Owner-only: the kernel tells the server who connected (SO_PEERCRED). Only the daemon's own uid and
root are served; anyone else gets one refusal line and the connection is closed at once. Nothing
secret is ever sent (counters and names only), but the counters still say what a user's jobs do.

Protocol, version :data:`PROTOCOL`: the client sends one line, a command word and, for commands that
take them, arguments separated by spaces (``stats\\n``); the server answers one line of JSON, an
object that always carries ``"protocol"``, and closes. A failure is ``{"protocol": 1, "error":
"what went wrong", "code": "EINVAL" | "EACCES" | "EIO", ...}``. Commands: ``stats``. New commands
(say, ``log-level DEBUG``) and new fields may be added within a version; a client ignores fields it
does not know. An incompatible change bumps the version.

Inside the daemon the server runs as trio tasks in the mount's nursery: a snapshot is a few dict
copies and one ``json.dumps`` on the trio thread, and no connection can hold the loop (every read
and write has a deadline; at most :data:`MAX_CLIENTS` connections are served at once).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from . import __version__

if TYPE_CHECKING:
    from .config import MountConfig

log = logging.getLogger(__name__)

PROTOCOL = 1
NAME_PREFIX = b"\0s3xfs/"
MAX_REQUEST = 4096  # bytes of a request line; longer ones are refused
TIMEOUT = 5.0  # seconds a client has to send its request and take the answer
MAX_CLIENTS = 8  # connections served at once; more wait in the listen backlog
BACKLOG = 16
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def canonical_mountpoint(path: str | os.PathLike[str]) -> str:
    """The mount point as the kernel's mount table shows it: absolute, symbolic links resolved."""
    return os.path.realpath(os.path.abspath(path))


def socket_address(mountpoint: str | os.PathLike[str], *, canonical: bool = False) -> bytes:
    """The abstract socket name of the daemon serving ``mountpoint`` (``canonical``: already resolved)."""
    path = os.fspath(mountpoint) if canonical else canonical_mountpoint(mountpoint)
    return NAME_PREFIX + hashlib.sha256(os.fsencode(path)).hexdigest()[:32].encode()


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


class RequestError(Exception):
    """A request the server understood but cannot do as asked (EINVAL to the client)."""


def error_reply(message: str, code: int, **extra: Any) -> dict[str, Any]:
    return {"protocol": PROTOCOL, "error": message, "code": errno.errorcode[code], **extra}


def encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n"


class ControlServer:
    """Serves one mount's control socket. Build it before the mount exists (the mount point's real
    path is resolved here, where it cannot call into this very filesystem); run :meth:`serve` in
    the mount's nursery, which stops it."""

    def __init__(self, mountpoint: str | os.PathLike[str], snapshot: Callable[[], dict[str, Any]], *,
                 identity: dict[str, Any] | None = None) -> None:
        self.mountpoint = canonical_mountpoint(mountpoint)
        self.address = socket_address(self.mountpoint, canonical=True)
        self.snapshot = snapshot
        self.identity = {"mountpoint": self.mountpoint, **(identity or {})}
        self.allowed_uids = frozenset({os.geteuid(), os.getuid(), 0})
        self.started = time.time()
        self._started_monotonic = time.monotonic()
        self.commands: dict[str, Callable[[list[str]], dict[str, Any]]] = {"stats": self._stats}
        self.serving = False
        self._limit = trio.Semaphore(MAX_CLIENTS)

    async def serve(self, *, task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; ``task_status.started(True)`` once the name is bound (False: the
        mount runs without stats). Never raises but Cancelled: a broken control socket is logged."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(self.address)
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            reason = "another process serves this mount point" if exc.errno == errno.EADDRINUSE else exc.strerror
            log.warning("no live stats for %s: cannot bind its control socket (%s)", self.mountpoint, reason)
            task_status.started(False)
            return
        self.serving = True
        task_status.started(True)
        try:
            async with trio.open_nursery() as nursery:
                await self._accept_loop(sock, nursery)
        finally:
            self.serving = False
            sock.close()

    async def _accept_loop(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        failures_logged = False
        while True:
            await self._limit.acquire()
            try:
                conn, _ = await sock.accept()
            except OSError as exc:  # EMFILE and the like: never take the mount down for it
                self._limit.release()
                if not failures_logged:
                    log.warning("control socket of %s: accept failed: %s (retrying)", self.mountpoint, exc)
                    failures_logged = True
                await trio.sleep(0.5)
                continue
            except BaseException:
                self._limit.release()
                raise
            nursery.start_soon(self._handle, conn)

    async def _handle(self, conn: trio.socket.SocketType) -> None:
        stream = trio.SocketStream(conn)
        try:
            with trio.move_on_after(TIMEOUT):
                _, uid, _ = peer_credentials(conn)
                if uid not in self.allowed_uids:
                    owner = f"uid {os.geteuid()} and root" if os.geteuid() else "root"
                    await stream.send_all(encode(error_reply(
                        f"permission denied: the stats of {self.mountpoint} are for {owner} only", errno.EACCES)))
                    return
                line = await _receive_line(stream)
                await stream.send_all(encode(self.answer(line)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away
        except Exception:  # noqa: BLE001 - a control request must never take the mount down
            log.exception("control socket of %s: request failed", self.mountpoint)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            self._limit.release()

    def answer(self, line: bytes | None) -> dict[str, Any]:
        """The reply to one request line (None: no complete line arrived)."""
        if line is None:
            return error_reply(f"a request is one line of at most {MAX_REQUEST} bytes", errno.EINVAL)
        words = line.decode("utf-8", "replace").split()
        command = self.commands.get(words[0]) if words else None
        if command is None:
            name = words[0] if words else ""
            return error_reply(f"unknown request {name!r}", errno.EINVAL, commands=sorted(self.commands))
        try:
            return {"protocol": PROTOCOL, **command(words[1:])}
        except RequestError as exc:
            return error_reply(str(exc), errno.EINVAL)
        except Exception as exc:  # noqa: BLE001 - reported to the client, logged here
            log.exception("control request %r failed", words[0])
            return error_reply(f"internal error: {exc}", errno.EIO)

    def _stats(self, args: list[str]) -> dict[str, Any]:
        if args:
            raise RequestError("stats takes no arguments")
        identity = dict(self.identity, pid=os.getpid(), uid=os.geteuid(), version=__version__,
                        started=self.started, uptime=time.monotonic() - self._started_monotonic)
        return {"identity": identity, **self.snapshot()}


async def _receive_line(stream: trio.SocketStream) -> bytes | None:
    """One request line (without its newline), or None if it is too long or the client stopped short."""
    data = b""
    while b"\n" not in data:
        if len(data) > MAX_REQUEST:
            return None
        chunk = await stream.receive_some(MAX_REQUEST + 1)
        if not chunk:
            return None
        data += chunk
    line = data.split(b"\n", 1)[0]
    return line if len(line) <= MAX_REQUEST else None


def for_mount(config: MountConfig, snapshot: Callable[[], dict[str, Any]]) -> ControlServer:
    """The control server of a mount made from a ``MountConfig``."""
    cache_dir = config.cache_dir
    identity = {"bucket": config.bucket, "prefix": config.prefix, "read_only": config.read_only,
                "endpoint_url": config.endpoint_url, "region": config.region,
                "cache_dir": str(cache_dir) if cache_dir is not None else None}
    return ControlServer(Path(config.mountpoint), snapshot, identity=identity)
