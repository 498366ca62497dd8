"""The mount's process lifecycle: fork, mount, report readiness, serve, unmount on a signal.

Without ``--foreground`` the command forks at once (before trio or any thread exists); the child
connects, checks access, mounts, and only then tells the parent "ready" through a pipe, so the
``s3xfs mount`` command exits 0 exactly when the mount is usable, or non-zero with the child's
one-line reason. SIGTERM/SIGINT/SIGHUP unmount cleanly, SIGUSR1/SIGUSR2 change the log level;
an external ``fusermount3 -u`` ends the daemon.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import trio

from . import control
from . import logs
from .client import errors as client_errors
from .client.naming import endpoint_for, parse_bucket_name
from .client.s3 import ClientOptions, open_client
from .config import MountConfig
from .core.cache import CacheStore, Namespace
from .core.fs import Filesystem, FsOptions
from .fuse_ops import FuseOperations
from .logs import LogControl
from .malloc_tuning import keep_freed_buffers
from .mount_table import mounted_on, read_mountinfo
from .notify import notify

log = logging.getLogger("s3xfs")


class MountFailed(Exception):
    """The mount cannot be made; the message is the one line the user sees."""


def run(config: MountConfig, program: str = "s3xfs") -> int:
    """Mount and serve; ``program`` names the command in the one-line failure (s3xfs or mount.s3xfs)."""
    # Everything the daemon writes (cache files diskcache makes, staged files, logs) holds bucket
    # content or names: private to the mount's owner whatever the caller's umask.
    os.umask(0o077)
    if config.foreground:
        _start_logging(config, detached=False)
        keep_freed_buffers()
        try:
            trio.run(serve, config, lambda: None)
        except MountFailed as exc:
            print(f"{program}: {exc}", file=sys.stderr)
            return 1
        return 0
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        return _wait_for_child(read_end, pid, program)
    os.close(read_end)
    _start_logging(config, detached=True)
    keep_freed_buffers()
    status = 1
    try:
        trio.run(serve, config, lambda: _report(write_end, "ready"))
        status = 0
    except MountFailed as exc:
        _report(write_end, f"error {exc}")
    except BaseException as exc:  # noqa: BLE001 - the parent must hear about any failure
        log.exception("the daemon failed")
        _report(write_end, f"error internal error: {exc}")
    os._exit(status)


def _report(fd: int, message: str) -> None:
    try:
        os.write(fd, (message + "\n").encode())
        os.close(fd)
    except OSError:
        pass
    if message == "ready":
        _detach_stdio()
        # Leave the caller's session only now: under a systemd .automount, autofs lets through only
        # the process group that is mounting; a new session before the mount would wait on itself.
        os.setsid()


def _detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _wait_for_child(fd: int, pid: int, program: str) -> int:
    with os.fdopen(fd, "rb") as pipe:
        line = pipe.readline().decode(errors="replace").strip()
    if line == "ready":
        return 0
    if line.startswith("error "):
        print(f"{program}: {line[len('error '):]}", file=sys.stderr)
    else:
        _, status = os.waitpid(pid, 0)
        print(f"{program}: the daemon exited (status {status}) before the mount was ready; see its log", file=sys.stderr)
    return 1


_log_control: LogControl | None = None  # set once per process, before trio starts


def _start_logging(config: MountConfig, detached: bool) -> None:
    global _log_control
    _log_control = logs.setup(config.log_level, config.debug_modules, config.log_file, detached)


def _fuse_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    options |= {f"fsname={config.fsname}", "subtype=s3xfs", "ro" if config.read_only else "rw"}
    if config.allow_other:
        options.add("allow_other")
    elif config.allow_root:
        options.add("allow_root")
    return options | set(config.kernel_flags)


async def serve(config: MountConfig, ready: Callable[[], None]) -> None:
    """Connect, check, mount, serve until unmounted or signalled."""
    options = ClientOptions(region=config.region, read_only=config.read_only, endpoint_url=config.endpoint_url,
                            profile=config.profile, max_connections=config.max_threads)
    try:
        bucket = parse_bucket_name(config.bucket)
        async with open_client(bucket, options) as client:
            try:
                await client.probe(config.prefix)
            except client_errors.ClientError as exc:
                raise MountFailed(_reason(exc)) from None
            cache = _open_cache(config)
            try:
                fs = Filesystem(client, FsOptions(
                    prefix=config.prefix, read_only=config.read_only, uid=config.uid, gid=config.gid,
                    file_mode=config.file_mode, dir_mode=config.dir_mode, metadata_ttl=config.metadata_ttl,
                    negative_ttl=config.negative_ttl, part_size=config.part_size, read_buffer=config.read_buffer,
                    staging_dir=str(config.staging_dir), cache_block_size=config.cache_block_size,
                    max_cached_entries=config.max_cached_entries), cache=cache)
                await _mount_and_serve(config, fs, ready)
            finally:
                if cache is not None:
                    with trio.CancelScope(shield=True):  # waits for the block writer: not on the trio thread
                        await trio.to_thread.run_sync(cache.close)
    except client_errors.ClientError as exc:
        raise MountFailed(_reason(exc)) from None


def _open_cache(config: MountConfig) -> CacheStore | None:
    """The --cache directory, namespaced by endpoint + bucket + prefix."""
    if config.cache_dir is None:
        return None
    import sqlite3

    from .core.cache import CacheDirError

    bucket = parse_bucket_name(config.bucket)
    endpoint = config.endpoint_url or endpoint_for(bucket, config.region).url
    try:
        return CacheStore(config.cache_dir, Namespace(endpoint, config.bucket, config.prefix),
                          size_limit=config.max_cache_size, block_writer=True)
    except (CacheDirError, OSError, sqlite3.Error) as exc:
        raise MountFailed(f"cannot use cache directory {config.cache_dir}: {exc}") from None


def _reason(exc: client_errors.ClientError) -> str:
    text = str(exc)
    if isinstance(exc, client_errors.Unavailable):
        return f"cannot reach the bucket's endpoint: {text}"
    return text


async def _mount_and_serve(config: MountConfig, fs: Filesystem, ready: Callable[[], None]) -> None:
    ops = FuseOperations(fs)
    stats_server = control.for_mount(config, ops.stats)  # resolves the mount point before it is mounted
    try:
        pyfuse3.init(ops, str(config.mountpoint), _fuse_options(config))
    except RuntimeError as exc:
        raise MountFailed(f"cannot mount on {config.mountpoint}: {exc}") from None
    unmounted = False
    try:
        log.info("mounted %s%s at %s (%s)", config.bucket, f"/{config.prefix}" if config.prefix else "",
                 config.mountpoint, "read-only" if config.read_only else "read-write")
        async with trio.open_nursery() as nursery:
            fs.attach(nursery)
            await nursery.start(stats_server.serve)  # `s3xfs stats`; stops with the nursery
            nursery.start_soon(_watch_signals)
            nursery.start_soon(_when_initialized, config, ops, ready)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
        await fs.close()
        pyfuse3.close(unmount=True)
        unmounted = True
    finally:
        if not unmounted:
            pyfuse3.close(unmount=True)


INIT_TIMEOUT = 5.0  # the kernel sends FUSE INIT as soon as the session starts reading


async def _when_initialized(config: MountConfig, ops: FuseOperations, ready: Callable[[], None]) -> None:
    """After the kernel's INIT (which resets the read-ahead to the negotiated 128 KiB): tune, then report ready."""
    with trio.move_on_after(INIT_TIMEOUT):
        await ops.initialized.wait()
    if not ops.initialized.is_set():
        log.warning("no FUSE INIT from the kernel within %.0f s", INIT_TIMEOUT)
    await trio.sleep(0.05)  # INIT's reply is processed by the kernel just after our callback returned
    _raise_read_ahead(config)
    ready()
    notify(f"READY=1\nSTATUS=Serving {config.bucket} at {config.mountpoint}\nMAINPID={os.getpid()}")


async def _watch_signals() -> None:
    """SIGTERM/SIGINT/SIGHUP unmount; SIGUSR1 logs one level more verbosely, SIGUSR2 restores the level."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                   signal.SIGUSR1, signal.SIGUSR2) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum in (signal.SIGUSR1, signal.SIGUSR2):
                if _log_control is not None:
                    level = _log_control.more_verbose() if signum == signal.SIGUSR1 else _log_control.restore()
                    log.warning("received %s: log level now %s", name, level)
                continue
            log.info("received %s: unmounting", name)
            notify("STOPPING=1")
            pyfuse3.terminate()
            return


def _raise_read_ahead(config: MountConfig) -> None:
    """Raise the kernel's read-ahead for this mount so sequential reads arrive as 1 MiB requests.

    The FUSE bdi starts at 128 KiB; each request costs Python overhead, so larger requests are
    the single biggest throughput lever. Needs write access to sysfs (root); skipped otherwise.
    The device number comes from the mount table: a stat() of the mount point would call into
    this very filesystem before it serves (so only its parent is resolved).
    """
    target = os.path.join(os.path.realpath(config.mountpoint.parent), config.mountpoint.name)
    try:
        entry = mounted_on(target, read_mountinfo())
        if entry is None:
            raise OSError(f"{target} is not in the mount table")
        path = Path(f"/sys/class/bdi/{entry.device}/read_ahead_kb")
        path.write_text(str(config.read_ahead_kb))
        log.debug("read-ahead of %s set to %s KiB", target, path.read_text().strip())
    except OSError as exc:
        log.debug("could not raise read-ahead of %s: %s", target, exc)
