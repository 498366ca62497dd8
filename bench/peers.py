"""s3xfs against its peers (issue 8): the same workloads, on the same endpoint, in the same run,
through s3xfs and through what users would pick instead.

Targets, all on one ``s3xfs-localzone`` on 127.0.0.1 (its storage on tmpfs, so dropping the kernel's
caches only ever empties the *client's* memory, never the "remote" one's):

- ``s3xfs``: s3xfs on the directory bucket (S3 Express sessions);
- ``s3xfs-gp``: s3xfs on a general purpose bucket of the same endpoint (plain SigV4, no sessions);
- ``s3fs``, ``s3fs-cache``: s3fs-fuse on the general purpose bucket, without and with ``use_cache=DIR``;
- ``rclone-off``, ``rclone-full``: ``rclone mount`` on it, ``--vfs-cache-mode off`` and ``full``;
- ``direct``: boto3 straight on the directory bucket, parallel GETs/PUTs (the network limit);
- ``local``: the same files on local disk (the local limit).

Workloads (bench/peers_workloads.py): fio sequential reads (1 and 4 jobs) and random 256 KiB reads,
a sequential write timed until the object is in the bucket, ``ls -l``, ``find``, a training epoch 1
and 2 (8 readers), a stat storm and time to first byte; each with 0 ms and 4 ms of first-byte latency
injected by the endpoint. Every cold workload gets a fresh mount with empty cache directories,
after dropping the kernel's caches (as root). Medians of ``--repeats`` runs (3; 1 with ``--quick``).

Everything started here (the endpoint, every mount, every workload process) is stopped by PID in
``finally`` blocks, mounts with ``fusermount3 -u -z``, also on Ctrl-C or SIGTERM; a workload that
outlives its time limit is killed, its mount torn down under it, and it is reported as failed.

Output: ``bench/results/peers.json`` (every raw sample), tables printed, and unless ``--no-docs`` the
section of docs/BENCHMARKS.md between its markers plus docs/benchmarks-peers.png.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from bench import peers_report
from bench.localzone import ACCESS_KEY, REGION, SECRET_KEY
from bench.mount import Mount, Owned, cpu_seconds, endpoint_stats, reset_stats
from bench.peers_workloads import (BY_NAME, LARGE, MANY, RANDOM_BLOCK, TINY_BODY, TRAIN, TRAIN_SIZE, TREE, TTFB,
                                   TTFB_SIZE, WRITES, Scale, driver_command, fio_command, many_names, parse_fio,
                                   stat_names, train_names, tree_names, ttfb_names)
from bench.report import RESULTS
from bench.training import drop_caches, set_latency
from tests.support.mount import NotifySocket

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent  # the drivers run as ``python -m bench.peers_workloads`` from here
DIRECTORY_BUCKET = "bench--usw2-az1--x-s3"
GENERAL_BUCKET = "bench-general"
LATENCIES_MS = (0.0, 4.0)  # a loopback endpoint, and one a few milliseconds away (another AZ / region edge)
S3XFS_OPTIONS = ("--metadata-ttl", "60")  # the peers cache metadata by default (s3fs 900 s, rclone 5 min)
DIRECT_PART = 8 * MiB  # direct limit: ranged GET / upload part size (s3xfs's default --part-size)
DIRECT_THREADS = 8  # direct limit: parallel requests (s3xfs's prefetcher runs up to 8 per file)
TINY_PROCESSES = 3  # boto3 signs in Python: several processes put tiny objects faster than one
MOUNT_TIMEOUT = 60.0  # a mount that is not ready by then failed (the machine may be loaded)
TIMEOUT_FLOOR = 60.0  # every workload may take this long whatever its size ...
TIMEOUT_RATE = 4e6  # ... plus its bytes at 4 MB/s ...
TIMEOUT_PER_OP = 0.05  # ... plus 50 ms per file or request: well beyond any healthy peer
VISIBLE_TIMEOUT = 120.0  # a written file must be in the bucket this long after close
KILL_GRACE = 5.0  # after SIGKILL, how long a workload process may take to go before its mount is torn down

# The cold units: each is one fresh mount; epoch 2 reads on epoch 1's mount.
UNITS: tuple[tuple[str, ...], ...] = (("seq_read_1",), ("seq_read_4",), ("rand_read",), ("seq_write",), ("ls_l",),
                                      ("find",), ("epoch1", "epoch2"), ("stat_storm",), ("ttfb",))


@dataclass(frozen=True)
class Peer:
    name: str
    label: str
    kind: str  # "s3xfs", "s3fs", "rclone", "direct", "local"
    bucket: str | None
    options: tuple[str, ...] = ()

    @property
    def mounts(self) -> bool:
        return self.kind in ("s3xfs", "s3fs", "rclone")


PEERS: tuple[Peer, ...] = (
    Peer("s3xfs", "s3xfs (directory bucket)", "s3xfs", DIRECTORY_BUCKET, S3XFS_OPTIONS),
    Peer("s3xfs-gp", "s3xfs (general purpose)", "s3xfs", GENERAL_BUCKET, S3XFS_OPTIONS),
    Peer("s3fs", "s3fs-fuse", "s3fs", GENERAL_BUCKET),
    Peer("s3fs-cache", "s3fs-fuse (use_cache)", "s3fs", GENERAL_BUCKET, ("use_cache",)),
    Peer("rclone-off", "rclone (cache off)", "rclone", GENERAL_BUCKET, ("--vfs-cache-mode", "off")),
    # write-back after 100 ms instead of 5 s: the write is timed until the object is in the bucket,
    # and rclone's configurable delay would otherwise dominate it
    Peer("rclone-full", "rclone (cache full)", "rclone", GENERAL_BUCKET,
         ("--vfs-cache-mode", "full", "--vfs-write-back", "100ms")),
    Peer("direct", "direct boto3 (limit)", "direct", DIRECTORY_BUCKET),
    Peer("local", "local disk (limit)", "local", None),
)
PEER_BY_NAME = {p.name: p for p in PEERS}


class WorkloadFailed(RuntimeError):
    """A workload that did not produce a figure (its message goes into the table's failures)."""


# --- processes we own ----------------------------------------------------------------------------

class Endpoint:
    """s3xfs-localzone with both buckets, access log off, storage under ``root`` (tmpfs)."""

    def __init__(self, root: Path, log: Path) -> None:
        with open(log, "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "s3xfs.localzone", "--root", str(root), "--bucket", DIRECTORY_BUCKET,
                 "--bucket", GENERAL_BUCKET, "--access-log", "off"],
                stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if "listening on" not in line:
            self.stop()
            raise RuntimeError(f"s3xfs-localzone did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


class PeerMount(Mount):
    """A FUSE client in its own session, started and stopped by PID: s3xfs (ready at READY=1),
    s3fs or rclone (ready once the mount point is a mount)."""

    def __init__(self, kind: str, command: list[str], mountpoint: Path, log: Path, env: dict[str, str]) -> None:
        super().__init__(command, mountpoint, log)
        self.kind = kind
        self.env = env

    def start(self, timeout: float = MOUNT_TIMEOUT) -> "PeerMount":
        self.path.mkdir(parents=True, exist_ok=True)
        env = dict(self.env)
        with NotifySocket(self.path.parent / f".{self.path.name}.notify") as notify, open(self.log, "ab") as log:
            if self.kind == "s3xfs":
                env["NOTIFY_SOCKET"] = str(notify.path)
            self.proc = subprocess.Popen(self.command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
            deadline = time.monotonic() + timeout
            while not ("READY=1" in notify.messages if self.kind == "s3xfs" else os.path.ismount(self.path)):
                if self.proc.poll() is not None:
                    raise WorkloadFailed(f"{self.kind} exited with {self.proc.returncode} before mounting: "
                                         f"{tail(self.log)}")
                if time.monotonic() > deadline:
                    raise WorkloadFailed(f"{self.kind} not mounted within {timeout:.0f} s: {tail(self.log)}")
                notify.receive(0.02)
        return self

    def stop(self) -> None:
        """s3xfs: SIGTERM (it unmounts itself), then make sure. s3fs and rclone exit once unmounted:
        lazy unmount, wait, then SIGTERM and SIGKILL by PID."""
        if self.kind == "s3xfs":
            super().stop()
            return
        proc = self.proc
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True, timeout=30)
        if proc is not None and proc.poll() is None:
            for sig, wait in ((None, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                if sig is not None:
                    proc.send_signal(sig)
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue

    def abort(self) -> None:
        """Tear the mount down under a stuck workload: lazy unmount and SIGKILL the daemon (by PID),
        which ends the FUSE connection, so every request still waiting fails at once."""
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True, timeout=30)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def tail(path: Path, chars: int = 400) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].strip() or "(no output)"
    except OSError:
        return "(no log)"


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a child we started in its own session, and whatever it started (its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_bounded(command: list[str], timeout: float, mount: PeerMount | None) -> str:
    """Run a workload process; its stdout. Past ``timeout``: SIGKILL its group, and if it is stuck in
    a FUSE request even so, tear the mount down under it; then WorkloadFailed."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, start_new_session=True, cwd=REPO)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        try:
            proc.communicate(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            if mount is not None:
                mount.abort()
            try:
                proc.communicate(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                pass
        raise WorkloadFailed(f"timed out after {timeout:.0f} s (killed)") from None
    finally:
        if proc.poll() is None:  # Ctrl-C or another exception while it ran
            kill_group(proc)
            try:
                proc.wait(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                if mount is not None:
                    mount.abort()
    if proc.returncode != 0:
        detail = out.strip().splitlines()[-1] if out.strip() else err.strip()[-300:]
        try:
            detail = json.loads(detail)["error"]
        except (ValueError, KeyError, TypeError):
            pass
        raise WorkloadFailed(f"{Path(command[0]).name} exited with {proc.returncode}: {detail}")
    return out


def bounded_call(fn: Callable[[], dict[str, Any]], timeout: float) -> dict[str, Any]:
    """Run an in-process (boto3) workload in a thread, giving up after ``timeout``; the thread
    ends by itself within botocore's own timeouts."""
    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.update(fn())
        except Exception as exc:  # noqa: BLE001 - reported as this workload's failure
            failure.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise WorkloadFailed(f"timed out after {timeout:.0f} s")
    if failure:
        raise WorkloadFailed(f"{type(failure[0]).__name__}: {failure[0]}")
    return result


# --- clients and data ------------------------------------------------------------------------------

class CountingClient:
    """A boto3 client whose own requests are counted, so they can be told apart from a peer's."""

    def __init__(self, url: str, threads: int = 16) -> None:
        self.s3 = boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                               aws_secret_access_key=SECRET_KEY, config=Config(max_pool_connections=threads))
        self.sent: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.s3.meta.events.register("after-call.s3", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.sent[model.name] += 1

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.sent)


def _put_tiny(args: tuple[str, str, list[str]]) -> int:
    """In a forked worker: put these tiny objects with 8 threads over one client."""
    url, bucket, keys = args
    config = Config(max_pool_connections=8, parameter_validation=False, request_checksum_calculation="when_required")
    s3 = boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, config=config)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=TINY_BODY), keys))
    return len(keys)


def make_local(local: Path, scale: Scale) -> None:
    """The data sets on local disk: the local limit, and the source of every upload."""
    with open(local / LARGE, "wb") as f:
        for _ in range(scale.large // MiB):
            f.write(os.urandom(MiB))
    for directory, names, body in ((MANY, many_names(scale.entries), TINY_BODY),
                                   (TREE, tree_names(scale.tree), TINY_BODY)):
        for name in names:
            path = local / directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
    for name in train_names(scale.train):
        path = local / TRAIN / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(TRAIN_SIZE))
    (local / TTFB).mkdir()
    for name in ttfb_names(scale.ttfb):
        (local / TTFB / name).write_bytes(os.urandom(TTFB_SIZE))
    (local / WRITES).mkdir()
    os.sync()


def upload(url: str, client: CountingClient, bucket: str, local: Path, scale: Scale) -> None:
    """The same data sets into ``bucket``: the large file in 64 MiB parts, the tiny files from a few
    forked processes (``python -m bench`` can't be re-imported by spawn), the rest from threads."""
    s3 = client.s3
    s3.upload_file(str(local / LARGE), bucket, LARGE, Config=TransferConfig(multipart_chunksize=64 * MiB, max_concurrency=4))
    keys = [f"{MANY}/{n}" for n in many_names(scale.entries)] + [f"{TREE}/{n}" for n in tree_names(scale.tree)]
    chunks = [(url, bucket, keys[i::TINY_PROCESSES]) for i in range(TINY_PROCESSES)]
    with ProcessPoolExecutor(TINY_PROCESSES, mp_context=multiprocessing.get_context("fork")) as pool:
        if sum(pool.map(_put_tiny, chunks)) != len(keys):
            raise RuntimeError("not every tiny object was uploaded")
    files = [f"{TRAIN}/{n}" for n in train_names(scale.train)] + [f"{TTFB}/{n}" for n in ttfb_names(scale.ttfb)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=(local / key).read_bytes()), files))
    s3.put_object(Bucket=bucket, Key=f"{WRITES}/.keep", Body=b"")  # the write workload's directory


# --- one run ---------------------------------------------------------------------------------------

class Bench:
    """One benchmark run: the endpoint, the clients, the data, and how each sample is taken."""

    def __init__(self, workdir: Path, owned: Owned, scale: Scale, timeout: float | None, *,
                 drop_kernel_caches: bool = True) -> None:
        self.workdir = workdir
        self.drop_kernel_caches = drop_kernel_caches  # False in tests: other tests share the machine's caches
        self.owned = owned
        self.scale = scale
        self.fixed_timeout = timeout
        needed = 3 * scale.large + 2 * scale.train * TRAIN_SIZE  # both buckets' data, and one file being written
        self.storage = Path(tempfile.mkdtemp(prefix="s3xfs-bench-peers-", dir=storage_dir(needed)))
        (workdir / "logs").mkdir()
        try:
            self.endpoint = Endpoint(self.storage, workdir / "logs" / "localzone.log")
        except BaseException:
            shutil.rmtree(self.storage, ignore_errors=True)
            raise
        owned.endpoint = self.endpoint  # type: ignore[assignment]
        self.url = self.endpoint.url
        self.client = CountingClient(self.url, threads=max(16, DIRECT_THREADS))
        self.local = workdir / "local"
        self.local.mkdir()
        self.mounts = 0
        self.caches_dropped: list[bool] = []
        self.creds = self.workdir / "passwd-s3fs"  # s3fs refuses a password file others can read
        with os.fdopen(os.open(self.creds, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
            handle.write(f"{ACCESS_KEY}:{SECRET_KEY}\n")
        self.rclone_config = self.workdir / "rclone.conf"
        self.rclone_config.write_text(
            f"[lz]\ntype = s3\nprovider = Other\nendpoint = {self.url}\nregion = {REGION}\n"
            f"access_key_id = {ACCESS_KEY}\nsecret_access_key = {SECRET_KEY}\nforce_path_style = true\n")

    def close(self) -> None:
        shutil.rmtree(self.storage, ignore_errors=True)

    def generate(self, buckets: set[str]) -> None:
        started = time.perf_counter()
        make_local(self.local, self.scale)
        for bucket in sorted(buckets):
            upload(self.url, self.client, bucket, self.local, self.scale)
        print(f"data: {self.scale.describe()}; on local disk and in {len(buckets)} bucket(s) in "
              f"{time.perf_counter() - started:.1f} s", flush=True)

    # --- mounts ---

    def mount_for(self, peer: Peer) -> tuple[PeerMount, Path]:
        self.mounts += 1
        name = f"{self.mounts:04d}-{peer.name}"
        mountpoint = self.workdir / "mnt" / name
        scratch = self.workdir / "scratch" / name
        scratch.mkdir(parents=True)
        log = self.workdir / "logs" / f"{name}.log"
        if peer.kind == "s3xfs":
            command = [sys.executable, "-m", "s3xfs.cli", "mount", str(peer.bucket), str(mountpoint), "--foreground",
                       "--endpoint-url", self.url, "--region", REGION, "--staging-dir", str(scratch / "staging"),
                       *peer.options]
            env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        elif peer.kind == "s3fs":
            options = [f"passwd_file={self.creds}", f"url={self.url}", "use_path_request_style", "sigv4",
                       f"endpoint={REGION}", f"tmpdir={scratch}", "dbglevel=warn"]
            options += [f"use_cache={scratch / 'cache'}" if option == "use_cache" else option for option in peer.options]
            command = ["s3fs", str(peer.bucket), str(mountpoint), "-f", "-o", ",".join(options)]
            env = dict(os.environ)
        else:
            command = ["rclone", "--config", str(self.rclone_config), "mount", f"lz:{peer.bucket}", str(mountpoint),
                       "--cache-dir", str(scratch / "cache"), *peer.options]
            # rclone's SDK reads AWS_CA_BUNDLE (set on some hosts) and then refuses its own transport
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        return PeerMount(peer.kind, command, mountpoint, log, env), scratch

    @contextmanager
    def mounted(self, peer: Peer) -> Iterator[PeerMount]:
        mount, scratch = self.mount_for(peer)
        self.owned.mounts.append(mount)
        try:
            mount.start()
            yield mount
        finally:
            mount.stop()  # if this is interrupted, the mount stays in owned and Owned.stop() retries
            self.owned.mounts.remove(mount)
            shutil.rmtree(scratch, ignore_errors=True)  # the peer's disk cache: the next mount starts empty

    def drop(self) -> None:
        self.caches_dropped.append(drop_caches() if self.drop_kernel_caches else False)

    # --- timeouts ---

    def timeout(self, workload: str) -> float:
        if self.fixed_timeout is not None:
            return self.fixed_timeout
        s = self.scale
        data = {"seq_read_1": s.large, "seq_read_4": s.large, "rand_read": s.random_reads * RANDOM_BLOCK * 4,
                "seq_write": s.large, "epoch1": s.train * TRAIN_SIZE, "epoch2": s.train * TRAIN_SIZE}.get(workload, 0)
        ops = {"rand_read": s.random_reads, "ls_l": s.entries, "find": s.tree, "epoch1": s.train, "epoch2": s.train,
               "stat_storm": s.stats, "ttfb": s.ttfb}.get(workload, 0)
        return TIMEOUT_FLOOR + data / TIMEOUT_RATE + ops * TIMEOUT_PER_OP

    # --- the workloads on a directory tree (a mount or the local disk) ---

    def on_tree(self, workload: str, root: Path, mount: PeerMount | None, repeat: int, tag: str) -> dict[str, Any]:
        s = self.scale
        timeout = self.timeout(workload)
        if BY_NAME[workload].uses_fio:
            return parse_fio(workload, run_bounded(fio_command(workload, root / LARGE, s), timeout, mount), s)
        if workload == "seq_write":
            args: dict[str, Any] = {"path": str(root / WRITES / f"{tag}.bin"), "size": s.large, "fsync": mount is None}
            command = driver_command("write", **args)
        elif workload == "ls_l":
            command = driver_command("ls", path=str(root / MANY), expected=s.entries)
        elif workload == "find":
            command = driver_command("find", path=str(root / TREE), expected=s.tree)
        elif workload in ("epoch1", "epoch2"):
            command = driver_command("epoch", root=str(root / TRAIN), files=s.train,
                                     seed=1000 * repeat + (1 if workload == "epoch1" else 2))
        elif workload == "stat_storm":
            command = driver_command("stat", root=str(root / MANY), names=stat_names(s), size=len(TINY_BODY))
        elif workload == "ttfb":
            command = driver_command("ttfb", root=str(root / TTFB), names=ttfb_names(s.ttfb))
        else:
            raise ValueError(workload)
        out = run_bounded(command, timeout, mount)
        return json.loads(out.strip().splitlines()[-1])

    def wait_visible(self, bucket: str, key: str, size: int) -> tuple[float, int]:
        """Poll HEAD until the object has all its bytes: (time.time() then, HEADs sent)."""
        deadline = time.monotonic() + VISIBLE_TIMEOUT
        polls = 0
        while True:
            polls += 1
            try:
                if self.client.s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == size:
                    return time.time(), polls
            except self.client.s3.exceptions.ClientError:
                pass
            if time.monotonic() > deadline:
                raise WorkloadFailed(f"{key} was not in the bucket with {size} bytes {VISIBLE_TIMEOUT:.0f} s after close")
            time.sleep(0.01)

    # --- the direct limit (boto3, in this process) ---

    def direct(self, workload: str, repeat: int, tag: str) -> dict[str, Any]:
        s3, bucket, s = self.client.s3, DIRECTORY_BUCKET, self.scale

        def get(key: str, start: int, length: int) -> int:
            body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")["Body"]
            try:
                return len(body.read())
            finally:
                body.close()

        def whole(key: str) -> int:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"]
            try:
                return len(body.read())
            finally:
                body.close()

        def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
            started = time.perf_counter()
            value = fn()
            return value, time.perf_counter() - started

        if workload in ("seq_read_1", "seq_read_4"):
            with ThreadPoolExecutor(DIRECT_THREADS) as pool:
                got, seconds = timed(lambda: sum(pool.map(lambda o: get(LARGE, o, min(DIRECT_PART, s.large - o)),
                                                          range(0, s.large, DIRECT_PART))))
            check(got == s.large, f"read {got} of {s.large} bytes")
            return {"value": s.large / seconds, "seconds": seconds}
        if workload == "rand_read":
            blocks = s.large // RANDOM_BLOCK
            offsets = [b * RANDOM_BLOCK for b in random.Random(4).sample(range(blocks), s.random_reads)]
            got, seconds = timed(lambda: sum(get(LARGE, o, RANDOM_BLOCK) for o in offsets))
            check(got == s.random_reads * RANDOM_BLOCK, f"read {got} bytes")
            return {"value": s.random_reads / seconds, "seconds": seconds}
        if workload == "seq_write":
            data = os.urandom(s.large)
            config = TransferConfig(multipart_threshold=DIRECT_PART, multipart_chunksize=DIRECT_PART,
                                    max_concurrency=DIRECT_THREADS)
            key = f"{WRITES}/{tag}.bin"
            _, seconds = timed(lambda: s3.upload_fileobj(io.BytesIO(data), bucket, key, Config=config))
            return {"value": s.large / seconds, "seconds": seconds, "key": key}
        if workload in ("ls_l", "find"):
            prefix, expected = (f"{MANY}/", s.entries) if workload == "ls_l" else (f"{TREE}/", s.tree)
            delimiter = {"Delimiter": "/"} if workload == "ls_l" else {}

            def listing() -> int:
                pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, **delimiter)
                return sum(len(page.get("Contents", [])) for page in pages)
            got, seconds = timed(listing)
            check(got == expected, f"listed {got} of {expected} objects")
            return {"value": seconds, "seconds": seconds}
        if workload in ("epoch1", "epoch2"):
            order = [f"{TRAIN}/{n}" for n in train_names(s.train)]
            random.Random(1000 * repeat + (1 if workload == "epoch1" else 2)).shuffle(order)
            with ThreadPoolExecutor(8) as pool:
                sizes, seconds = timed(lambda: list(pool.map(whole, order)))
            check(all(size == TRAIN_SIZE for size in sizes), "a sample came back short")
            return {"value": s.train / seconds, "seconds": seconds}
        if workload == "stat_storm":
            keys = [f"{MANY}/{n}" for n in stat_names(s)]
            with ThreadPoolExecutor(8) as pool:
                sizes, seconds = timed(lambda: list(pool.map(
                    lambda k: s3.head_object(Bucket=bucket, Key=k)["ContentLength"], keys)))
            check(all(size == len(TINY_BODY) for size in sizes), "a HEAD gave the wrong size")
            return {"value": len(keys) / seconds, "seconds": seconds}
        if workload == "ttfb":
            times = []
            for name in ttfb_names(s.ttfb):
                got, seconds = timed(lambda: get(f"{TTFB}/{name}", 0, 1))
                check(got == 1, "no first byte")
                times.append(seconds)
            return {"value": statistics.median(times), "seconds": sum(times), "times": times}
        raise ValueError(workload)

    # --- samples ---

    def unit(self, peer: Peer, names: tuple[str, ...], latency: float, repeat: int) -> list[dict[str, Any]]:
        """The samples of one unit (one fresh mount) for one peer."""
        samples: list[dict[str, Any]] = []
        base = {"peer": peer.name, "latency_ms": latency, "repeat": repeat}
        if peer.kind != "direct":
            self.drop()

        def take(mount: PeerMount | None, root: Path) -> None:
            for name in names:
                if samples and not samples[-1]["ok"]:  # epoch 2 without its epoch 1
                    samples.append(base | {"workload": name, "ok": False, "value": None,
                                           "error": f"not run: {samples[-1]['workload']} failed"})
                else:
                    samples.append(self.sample(peer, name, latency, repeat, mount, root, base))

        if not peer.mounts:
            take(None, self.local)
            return samples
        try:
            with self.mounted(peer) as mount:
                take(mount, mount.path)
        except WorkloadFailed as exc:  # the mount itself failed
            done = {s["workload"] for s in samples}
            samples += [base | {"workload": n, "ok": False, "value": None, "error": str(exc)}
                        for n in names if n not in done]
        return samples

    def sample(self, peer: Peer, workload: str, latency: float, repeat: int, mount: PeerMount | None, root: Path,
               base: dict[str, Any]) -> dict[str, Any]:
        tag = f"{peer.name}-{latency:g}ms-{repeat}-{time.monotonic_ns()}"
        sample: dict[str, Any] = base | {"workload": workload, "ok": False, "value": None, "error": None}
        daemon = mount.pid if mount is not None and mount.proc is not None else None
        own_before = self.client.snapshot()
        if peer.kind == "direct":  # the direct client's connections and session are warm, as a mount's are
            self.client.s3.head_object(Bucket=DIRECTORY_BUCKET, Key=LARGE)
        reset_stats(self.url)
        cpu_before = self.cpu(daemon)
        key = None
        try:
            if peer.kind == "direct":
                figures = bounded_call(lambda: self.direct(workload, repeat, tag), self.timeout(workload))
                key = figures.pop("key", None)
            else:
                figures = self.on_tree(workload, root, mount, repeat, tag)
                if "error" in figures:
                    raise WorkloadFailed(figures["error"])
                if workload == "seq_write" and peer.mounts:
                    key = f"{WRITES}/{tag}.bin"
                    visible_at, polls = self.wait_visible(str(peer.bucket), key, self.scale.large)
                    figures["close_seconds"] = figures["seconds"]
                    figures["seconds"] = visible_at - figures.pop("opened_at")
                    figures["value"] = self.scale.large / figures["seconds"]
                    figures["visibility_polls"] = polls
            sample.update(figures, ok=True)
        except (WorkloadFailed, RuntimeError, ValueError, KeyError, OSError) as exc:
            sample["error"] = str(exc) if isinstance(exc, WorkloadFailed) else f"{type(exc).__name__}: {exc}"
        finally:
            sample["cpu"] = self.cpu_delta(cpu_before, daemon)
            stats = endpoint_stats(self.url)
            own = self.client.snapshot() - own_before if peer.kind != "direct" else Counter()
            sample["requests"] = {op: n - own.get(op, 0) for op, n in stats["requests"].items() if n - own.get(op, 0) > 0}
            sample["bytes_out"], sample["bytes_in"] = stats.get("bytes_out"), stats.get("bytes_in")
            sample["statuses"] = stats.get("statuses")
            self.cleanup_write(peer, workload, root, tag, key)
        return sample

    def cleanup_write(self, peer: Peer, workload: str, root: Path, tag: str, key: str | None) -> None:
        """Written files go at once: at full scale each is 1 GiB."""
        if workload != "seq_write":
            return
        if peer.kind == "local":
            (root / WRITES / f"{tag}.bin").unlink(missing_ok=True)
            return
        bucket = DIRECTORY_BUCKET if peer.kind == "direct" else str(peer.bucket)
        try:
            self.client.s3.delete_object(Bucket=bucket, Key=key or f"{WRITES}/{tag}.bin")
        except self.client.s3.exceptions.ClientError:
            pass

    def cpu(self, daemon: int | None) -> dict[str, float]:
        t = os.times()
        return {"daemon": cpu_seconds(daemon) if daemon else 0.0, "endpoint": cpu_seconds(self.endpoint.proc.pid),
                "client": t.user + t.system + t.children_user + t.children_system}

    def cpu_delta(self, before: dict[str, float], daemon: int | None) -> dict[str, float]:
        try:
            after = self.cpu(daemon)
        except OSError:  # the daemon is gone (killed after a timeout)
            after = self.cpu(None) | {"daemon": before["daemon"]}
        return {k: round(after[k] - before[k], 4) for k in before}


def check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(message)


def storage_dir(needed: int) -> str:
    """Where the endpoint keeps its objects: tmpfs, which dropping the kernel's caches leaves alone,
    if it has room (a container's /dev/shm may be tiny); else the temporary directory, and then a
    cold run also reads the "remote" objects from disk."""
    shm = "/dev/shm"
    try:
        if os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > needed + 256 * MiB:
            return shm
    except OSError:
        pass
    print(f"note: {shm} has no room for {needed / 2**30:.1f} GiB: the endpoint's storage is on disk", file=sys.stderr)
    return tempfile.gettempdir()


# --- the machine -----------------------------------------------------------------------------------

def version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "not installed"


def describe_machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    tools = {"fio": version(["fio", "--version"]), "s3fs": version(["s3fs", "--version"]).split(" with ")[0],
             "rclone": version(["rclone", "version"])}
    cores = os.cpu_count() or 1
    description = (f"{platform.machine()}, {cores} cores ({cpu}), {memory:.0f} GiB, Linux {platform.release()}, "
                   f"Python {platform.python_version()}, s3xfs at commit {commit}; {tools['fio']}, "
                   f"{tools['s3fs'].replace('Amazon Simple Storage Service File System ', 's3fs-fuse ')}, {tools['rclone']}")
    return {"description": description, "cores": cores, "cpu": cpu, "memory_gib": round(memory, 1),
            "kernel": platform.release(), "python": platform.python_version(), "commit": commit, "tools": tools}


# --- the command -----------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="./dev bench peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run instead of 3, and --scale 0.25 unless given")
    parser.add_argument("--scale", type=float, help="fraction of the issue's data sizes (1 GiB, 10,000 files, "
                        "2,000 samples), in (0, 1] (default: 1; 0.25 with --quick)")
    parser.add_argument("--repeats", type=int, help="runs of every workload (default: 3; 1 with --quick)")
    parser.add_argument("--peers", help=f"comma-separated subset of: {','.join(PEER_BY_NAME)} (s3xfs is always run)")
    parser.add_argument("--workloads", help=f"comma-separated subset of: {','.join(BY_NAME)}")
    parser.add_argument("--latencies", default=",".join(f"{ms:g}" for ms in LATENCIES_MS),
                        help="comma-separated first-byte latencies in ms (default: 0,4)")
    parser.add_argument("--timeout", type=float, help="seconds any one workload may take (default: from its size)")
    parser.add_argument("--results", type=Path, default=RESULTS / "peers.json",
                        help="the results JSON (default: %(default)s)")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/BENCHMARKS.md and the chart alone")
    parser.add_argument("--report-only", action="store_true", help="rebuild the tables, chart and docs from --results")
    args = parser.parse_args(argv)

    def names(text: str | None, known: dict[str, Any], what: str) -> list[str]:
        if text is None:
            return list(known)
        chosen = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in known]
        if unknown or not chosen:
            parser.error(f"unknown {what} {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}")
        return [n for n in known if n in chosen]

    args.peer_names = names(args.peers, PEER_BY_NAME, "peer")
    if "s3xfs" not in args.peer_names:
        args.peer_names.insert(0, "s3xfs")  # every ratio is taken against it
    args.workload_names = names(args.workloads, BY_NAME, "workload")
    try:
        args.latency_values = [float(v) for v in args.latencies.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--latencies must be numbers of milliseconds, such as 0,4, not {args.latencies!r}")
    if not args.latency_values or any(v < 0 or v > 10_000 for v in args.latency_values):
        parser.error("--latencies must be between 0 and 10000 ms")
    args.repeats = args.repeats if args.repeats is not None else 1 if args.quick else 3
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    factor = args.scale if args.scale is not None else 0.25 if args.quick else 1.0
    try:
        args.scale_value = Scale.of(factor)
    except ValueError as exc:
        parser.error(f"--scale: {exc}")
    args.scale_factor = factor
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def preflight(peers: list[Peer], workloads: list[str]) -> None:
    """Refuse to start without what the run needs, with the package that provides it."""
    missing = []
    if not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse")
    needs = {"fusermount3": "fuse3"}
    if any(BY_NAME[w].uses_fio for w in workloads):
        needs["fio"] = "fio"
    for peer in peers:
        if peer.kind in ("s3fs", "rclone"):
            needs[peer.kind] = peer.kind
    missing += [f"{tool} (Debian package {pkg})" for tool, pkg in needs.items() if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"bench peers: missing {', '.join(missing)}; `./dev setup` installs the packages")


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    peers = [PEER_BY_NAME[n] for n in args.peer_names]
    workloads = args.workload_names
    units = [tuple(n for n in unit if n in workloads) for unit in UNITS]
    units = [u for u in units if u]
    if "epoch2" in workloads and "epoch1" not in workloads:
        units = [("epoch1", "epoch2") if u == ("epoch2",) else u for u in units]
    started_at = datetime.now(timezone.utc)
    started = time.perf_counter()
    owned = Owned()
    samples: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "benchmark": "peers", "command": command, "started": started_at.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": describe_machine(), "scale": asdict(args.scale_value), "scale_factor": args.scale_factor,
        "scale_text": args.scale_value.describe(), "repeats": args.repeats, "latencies_ms": args.latency_values,
        "peers": [asdict(p) | {"options": list(p.options)} for p in peers],
        "workloads": [asdict(BY_NAME[n]) for n in workloads], "samples": samples, "interrupted": False,
        "load_average": [os.getloadavg()[0]],  # at the start and the end: was the machine shared?
    }

    def terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C

    previous = signal.signal(signal.SIGTERM, terminated)
    bench: Bench | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="s3xfs-bench-peers-") as tmp:
            try:
                bench = Bench(Path(tmp), owned, args.scale_value, args.timeout)
                buckets = {p.bucket for p in peers if p.bucket}
                bench.generate({b for b in buckets if b})
                total = len(args.latency_values) * args.repeats * sum(len(u) for u in units) * len(peers)
                for latency in args.latency_values:
                    set_latency(bench.url, latency)
                    for repeat in range(args.repeats):
                        for unit in units:
                            for peer in peers:
                                for sample in bench.unit(peer, unit, latency, repeat):
                                    samples.append(sample)
                                    progress(len(samples), total, sample)
                set_latency(bench.url, 0)
            except KeyboardInterrupt:
                result["interrupted"] = True
                print("\ninterrupted: stopping every mount and the endpoint", file=sys.stderr, flush=True)
            finally:
                try:
                    owned.stop()
                finally:
                    if bench is not None:
                        result["caches_dropped"] = bool(bench.caches_dropped) and all(bench.caches_dropped)
                        result["endpoint_on_tmpfs"] = str(bench.storage).startswith("/dev/shm/")
                        bench.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
    result["seconds"] = time.perf_counter() - started
    result["load_average"].append(os.getloadavg()[0])
    return result


def progress(done: int, total: int, sample: dict[str, Any]) -> None:
    workload = BY_NAME[sample["workload"]]
    figure = peers_report.fmt(sample["value"], workload.unit) if sample["ok"] else f"FAILED: {sample['error']}"
    requests = sum((sample.get("requests") or {}).values())
    print(f"[{done}/{total}] {sample['latency_ms']:g} ms run {sample['repeat'] + 1}: {sample['peer']:<11} "
          f"{workload.name:<10} {figure} ({requests} requests)", flush=True)


def report(result: dict[str, Any], results_path: Path, docs: bool) -> None:
    print()
    print(peers_report.markdown(result))
    if docs and not result.get("interrupted"):
        peers_report.chart(result, peers_report.CHART)
        peers_report.write_doc(result, peers_report.DOC, peers_report.CHART.name)
        print(f"wrote {peers_report.DOC} and {peers_report.CHART}")
    print(f"results: {results_path}")


def main(quick: bool = False, argv: list[str] | None = None) -> dict[str, Any]:
    """``./dev bench peers [options]`` (argv given), or one suite of ``./dev bench [--quick]`` (argv None)."""
    if argv is None:
        command = " ".join(["./dev bench", *sys.argv[1:]]).strip()
    else:
        command = " ".join(["./dev bench peers", *argv])
    argv = list(argv or [])
    if quick and "--quick" not in argv:
        argv.insert(0, "--quick")
    args = parse_args(argv)
    if args.report_only:
        try:
            result = json.loads(args.results.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"bench peers: cannot read {args.results}: {exc}") from None
        missing = [k for k in ("command", "machine", "scale", "peers", "workloads", "samples", "latencies_ms")
                   if not isinstance(result, dict) or k not in result]
        if missing:
            raise SystemExit(f"bench peers: {args.results} is not a peers results file (no {', '.join(missing)})")
        report(result, args.results, not args.no_docs)
        return result
    preflight([PEER_BY_NAME[n] for n in args.peer_names], args.workload_names)
    try:  # found out now, not after the run
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a"):
            pass
    except OSError as exc:
        raise SystemExit(f"bench peers: cannot write the results to {args.results}: {exc}") from None
    result = run(args, command)
    args.results.write_text(json.dumps(result, indent=1))
    report(result, args.results, not args.no_docs)
    if result["interrupted"]:
        raise SystemExit(130)
    return result


if __name__ == "__main__":
    raise SystemExit("usage: ./dev bench peers [--quick] [--scale F] ... (python -m bench peers --help)")
