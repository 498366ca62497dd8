"""s3xfs mount: reads through a real FUSE mount of s3xfs on s3xfs-localzone, each against its limit.

Workloads (issue 4), each with its baseline measured in the same run:

1. sequential read of a never-read object through a fresh mount (1 MiB ``readinto``), vs the direct
   limit: boto3 parallel ranged GETs of the same object (8 MiB parts, 8 threads, one client);
2. re-read of that file through the same mount (the kernel keeps its page cache while the ETag is
   unchanged), vs reading a local file of the same size from the page cache;
3. random 256 KiB ``os.pread``s at aligned offsets, vs single boto3 ranged GETs of the same ranges;
4. ``ls -l`` of a directory of 10,000 objects, cold (first listing of a fresh mount) and warm (again
   right away, within ``--metadata-ttl 60``), vs ``ls -l`` of the same files on local disk;
5. time to first byte: open + read 1 byte of a small object never looked up in this mount, vs a
   boto3 GET of 1 byte;
6. peak RSS of the daemon during the sequential read (VmRSS sampled every 50 ms).

Every mount is fresh (cold metadata, empty kernel page cache for its inodes), read-only, and is
unmounted in ``finally``: SIGTERM to the daemon by PID, then ``fusermount3 -u -z``; the same on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
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
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from tests.support.mount import NotifySocket

from bench.localzone import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, Endpoint
from bench.report import print_ratio_table, save_result

MiB = 1024 * 1024
GiB = 1024 * MiB
READ_SIZE = 1 * MiB  # the reader's readinto() size
PART = 8 * MiB  # direct baseline: ranged GET size (s3xfs's default --part-size)
THREADS = 8  # direct baseline: parallel GETs (s3xfs's prefetcher runs up to 8 per file)
RANDOM_READ = 256 * 1024
RANDOM_COUNT = 400
TTFB_OBJECTS = 20
TTFB_SIZE = 64 * 1024
SMALL_SIZE = 128  # the objects of the big directory
MOUNT_OPTIONS = ("--read-only", "--metadata-ttl", "60")


# --- processes we own -------------------------------------------------------------------------

class Mount:
    """A FUSE daemon in a subprocess (its own session: Ctrl-C reaches only us, and the ``finally``
    below unmounts in order): ``s3xfs mount --foreground``, or the in-memory reference filesystem."""

    def __init__(self, command: list[str], mountpoint: Path, log: Path) -> None:
        self.command = command
        self.path = mountpoint
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def s3xfs(cls, url: str, mountpoint: Path, log: Path, options: tuple[str, ...] = MOUNT_OPTIONS) -> "Mount":
        return cls([sys.executable, "-m", "s3xfs.cli", "mount", BUCKET, str(mountpoint), "--foreground",
                    "--endpoint-url", url, "--region", REGION, *options], mountpoint, log)

    def start(self, timeout: float = 30.0) -> "Mount":
        self.path.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        # s3xfs says READY=1 (sd_notify) once the mount is usable and tuned; the reference
        # filesystem says nothing, so for it a mount point is taken as ready.
        s3xfs = "s3xfs.cli" in self.command
        with NotifySocket(self.path.parent / f".{self.path.name}.notify") as notify, open(self.log, "ab") as log:
            env["NOTIFY_SOCKET"] = str(notify.path)
            self.proc = subprocess.Popen(self.command, env=env, stdout=subprocess.DEVNULL, stderr=log,
                                         start_new_session=True)
            deadline = time.monotonic() + timeout
            while not ("READY=1" in notify.messages if s3xfs else os.path.ismount(self.path)):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.command[2]} exited with {self.proc.returncode}: {self.log.read_text()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mount not ready in {timeout} s: {self.log.read_text()}")
                notify.receive(0.02)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM the daemon by PID (it unmounts), then make sure: lazy unmount, SIGKILL by PID."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
                proc.kill()
                proc.wait(timeout=10)
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)


class Owned:
    """Everything started by this benchmark, stopped in reverse order, also on Ctrl-C."""

    def __init__(self) -> None:
        self.mounts: list[Mount] = []
        self.endpoint: Endpoint | None = None

    def mount(self, mount: Mount) -> Mount:
        self.mounts.append(mount)
        return mount.start()

    def unmount(self, mount: Mount) -> None:
        mount.stop()
        self.mounts.remove(mount)

    def stop(self) -> None:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        try:
            for mount in reversed(self.mounts):
                mount.stop()
            self.mounts.clear()
            if self.endpoint is not None:
                try:
                    self.endpoint.stop()
                except subprocess.TimeoutExpired:
                    self.endpoint.proc.kill()
                    self.endpoint.proc.wait(timeout=10)
                self.endpoint = None
        finally:
            signal.signal(signal.SIGINT, previous)


# --- helpers ----------------------------------------------------------------------------------

def endpoint_stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_localzone/stats", timeout=10) as response:
        return json.load(response)


def reset_stats(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{url}/_localzone/reset", method="POST", data=b""), timeout=10).read()


def read_file(path: Path) -> tuple[int, float]:
    """Read a whole file with 1 MiB readinto(); (bytes, seconds from open to EOF)."""
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    total = 0
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            total += n
    return total, time.perf_counter() - started


def read_ahead_kib(mountpoint: Path) -> int | None:
    """The kernel read-ahead of a mount (its bdi), which caps the size of sequential FUSE reads."""
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if fields[4].encode().decode("unicode_escape") == str(mountpoint):
                try:
                    return int(Path(f"/sys/class/bdi/{fields[2]}/read_ahead_kb").read_text())
                except OSError:
                    return None
    return None


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """Max VmRSS of a process and its children (a mount's block writer), sampled every 50 ms in a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid))
                self.samples += 1
            except OSError:
                return
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid))
        except OSError:
            pass


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) of a process; ``None`` is this process."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (field 3, the state, is [0])."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The living children of a process (a mount's cache block writer)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as listed:
                found.extend(int(child) for child in listed.read().split())
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process, of the children it reaped, and of its living children, recursively:
    what a mount costs, its block writer included."""
    fields = _stat_fields(pid)
    total = sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime, stime, cutime, cstime
    for child in children(pid):
        with contextlib.suppress(OSError):  # exited meanwhile: counted in cutime once reaped
            total += tree_cpu_seconds(child)
    return total


def tree_rss_kib(pid: int) -> int:
    """VmRSS of a process and of its living children, recursively."""
    total = rss_kib(pid)
    for child in children(pid):
        with contextlib.suppress(OSError):
            total += tree_rss_kib(child)
    return total


class CpuMeter:
    """CPU seconds spent by the given processes and their children (and this process) while the
    block runs: the cost of a workload, which on a machine with few cores is what bounds its throughput."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self.seconds = 0.0

    def _total(self) -> float:
        return cpu_seconds() + sum(tree_cpu_seconds(pid) for pid in self.pids)

    def __enter__(self) -> "CpuMeter":
        self._start = self._total()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = self._total() - self._start


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def ls_l(path: Path) -> float:
    return timed(lambda: subprocess.run(["ls", "-l", str(path)], stdout=subprocess.DEVNULL, check=True))


# --- data ---------------------------------------------------------------------------------------

def make_data(s3, workdir: Path, size: int, large_keys: list[str], entries: int) -> Path:
    """The large objects (same bytes, separate keys: each one is read cold once), the big directory,
    the small objects for time to first byte; and their local twins for the baselines."""
    local = workdir / "local-large.bin"
    block = os.urandom(MiB)
    with open(local, "wb") as f:
        for _ in range(size // MiB):
            f.write(block)
    transfer = TransferConfig(multipart_chunksize=64 * MiB, max_concurrency=4)
    for key in large_keys:
        s3.upload_file(str(local), BUCKET, key, Config=transfer)

    local_dir = workdir / "local-many"
    local_dir.mkdir()
    body = b"x" * SMALL_SIZE
    names = [f"file-{n:05d}.txt" for n in range(entries)]
    for name in names:
        (local_dir / name).write_bytes(body)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: s3.put_object(Bucket=BUCKET, Key=f"many/{name}", Body=body), names))
        list(pool.map(lambda n: s3.put_object(Bucket=BUCKET, Key=f"ttfb/obj-{n:02d}.bin", Body=os.urandom(TTFB_SIZE)),
                      range(TTFB_OBJECTS)))
    return local


# --- the workloads ------------------------------------------------------------------------------

def mount_sequential(mount: Mount, endpoint_pid: int, key: str, size: int) -> dict:
    """Cold sequential read (with the daemon's RSS sampled and the CPU of reader, daemon and
    endpoint counted), then re-reads from the page cache."""
    idle_kib = rss_kib(mount.pid)
    with RssSampler(mount.pid) as sampler, CpuMeter(mount.pid, endpoint_pid) as cpu:
        total, cold = read_file(mount.path / key)
    assert total == size, f"read {total} bytes of {size}"
    hwm_kib = rss_kib(mount.pid, "VmHWM")
    rereads = []
    for _ in range(3):
        total, elapsed = read_file(mount.path / key)
        assert total == size
        rereads.append(size / elapsed)
    return {"cold": size / cold, "cpu_per_gib": cpu.seconds * GiB / size,
            "reread": statistics.median(rereads), "rereads": rereads,
            "rss_idle_mib": idle_kib / 1024, "rss_peak_mib": sampler.peak_kib / 1024, "rss_hwm_mib": hwm_kib / 1024,
            "rss_samples": sampler.samples}


def direct_parallel(s3, endpoint_pid: int, key: str, size: int, pool: ThreadPoolExecutor) -> tuple[float, float]:
    """(bytes per second, CPU seconds per GiB of this process and the endpoint)."""
    def get(start: int) -> int:
        end = min(start + PART, size) - 1
        body = s3.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={start}-{end}")["Body"]
        try:
            return len(body.read())
        finally:
            body.close()

    with CpuMeter(endpoint_pid) as cpu:
        started = time.perf_counter()
        total = sum(pool.map(get, range(0, size, PART)))
        elapsed = time.perf_counter() - started
    assert total == size
    return size / elapsed, cpu.seconds * GiB / size


def mount_random(mount: Mount, key: str, offsets: list[int]) -> float:
    fd = os.open(mount.path / key, os.O_RDONLY)
    try:
        started = time.perf_counter()
        for offset in offsets:
            if len(os.pread(fd, RANDOM_READ, offset)) != RANDOM_READ:
                raise RuntimeError(f"short read at {offset}")
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
    return len(offsets) / elapsed


def direct_random(s3, key: str, offsets: list[int]) -> float:
    started = time.perf_counter()
    for offset in offsets:
        body = s3.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={offset}-{offset + RANDOM_READ - 1}")["Body"]
        if len(body.read()) != RANDOM_READ:
            raise RuntimeError(f"short GET at {offset}")
    return len(offsets) / (time.perf_counter() - started)


def mount_ttfb(mount: Mount) -> float:
    os.stat(mount.path / "ttfb")  # the directory's own lookup is not part of it; its listing is never read
    times = []
    for n in range(TTFB_OBJECTS):
        path = mount.path / "ttfb" / f"obj-{n:02d}.bin"
        started = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            if len(os.read(fd, 1)) != 1:
                raise RuntimeError(f"no byte from {path}")
            times.append(time.perf_counter() - started)
        finally:
            os.close(fd)
    return statistics.median(times)


def direct_ttfb(s3) -> float:
    times = []
    for n in range(TTFB_OBJECTS):
        started = time.perf_counter()
        body = s3.get_object(Bucket=BUCKET, Key=f"ttfb/obj-{n:02d}.bin", Range="bytes=0-0")["Body"]
        if len(body.read()) != 1:
            raise RuntimeError("no byte")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# --- the reference: a minimal pyfuse3 filesystem serving from memory -----------------------------

def serve_memory_fs(mountpoint: str, size: int) -> None:
    """One read-only file ``data`` of ``size`` bytes, served from an 8 MiB buffer by zero-copy
    memoryview slices, 1 MiB kernel reads: what any pyfuse3 filesystem can reach on this machine
    without fetching anything. SIGTERM unmounts."""
    import errno
    import stat

    import pyfuse3
    import trio

    block = os.urandom(8 * MiB)

    class MemoryFs(pyfuse3.Operations):
        def init(self) -> None:
            # The kernel applies the INIT reply's max_readahead (128 KiB) to the mount's bdi when
            # the reply arrives: raise read-ahead only after it, from a task that runs once the
            # reply has been sent.
            trio.lowlevel.spawn_system_task(raise_read_ahead)

        async def getattr(self, inode: int, ctx: object = None) -> pyfuse3.EntryAttributes:
            attrs = pyfuse3.EntryAttributes()
            attrs.st_ino = inode
            attrs.entry_timeout = attrs.attr_timeout = 60
            if inode == pyfuse3.ROOT_INODE:
                attrs.st_mode, attrs.st_nlink = stat.S_IFDIR | 0o755, 2
            else:
                attrs.st_mode, attrs.st_nlink, attrs.st_size = stat.S_IFREG | 0o644, 1, size
            return attrs

        async def lookup(self, parent: int, name: bytes, ctx: object = None) -> pyfuse3.EntryAttributes:
            if parent != pyfuse3.ROOT_INODE or name != b"data":
                raise pyfuse3.FUSEError(errno.ENOENT)
            return await self.getattr(pyfuse3.ROOT_INODE + 1)

        async def open(self, inode: int, flags: int, ctx: object) -> pyfuse3.FileInfo:
            return pyfuse3.FileInfo(fh=inode, keep_cache=False)  # every open reads cold

        async def read(self, fh: int, off: int, length: int) -> memoryview:
            start = off % len(block)
            return memoryview(block)[start:start + min(length, len(block) - start, max(0, size - off))]

    async def raise_read_ahead() -> None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
                device = next(line.split()[2] for line in mountinfo if line.split()[4] == mountpoint)
            Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text("1024")
        except (OSError, StopIteration):
            pass  # not root: the kernel's 128 KiB reads (read_ahead_kib() reports what it is)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            async def on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        pyfuse3.terminate()
                        return
            nursery.start_soon(on_signal)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    pyfuse3.init(MemoryFs(), mountpoint, set(pyfuse3.default_options) | {"fsname=bench-memory", "ro"})
    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)


def memory_fs_ceiling(owned: Owned, workdir: Path, size: int, repeats: int) -> tuple[float, float, int | None]:
    mount = owned.mount(Mount([sys.executable, "-m", "bench.mount", "memory-fs", str(workdir / "memfs"), str(size)],
                              workdir / "memfs", workdir / "memfs.log"))
    try:
        read_file(mount.path / "data")  # after the first request the FUSE INIT has surely been answered
        read_ahead = read_ahead_kib(mount.path)
        rates, cpus = [], []
        for _ in range(repeats):
            with CpuMeter(mount.pid) as cpu:
                total, elapsed = read_file(mount.path / "data")
            assert total == size
            rates.append(size / elapsed)
            cpus.append(cpu.seconds * GiB / size)
    finally:
        owned.unmount(mount)
    return statistics.median(rates), statistics.median(cpus), read_ahead


# --- the run ------------------------------------------------------------------------------------

def run(workdir: Path, owned: Owned, size: int, entries: int, repeats: int) -> dict:
    owned.endpoint = Endpoint(workdir / "root")
    url = owned.endpoint.url
    s3 = boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, config=Config(max_pool_connections=16))
    # the direct baselines: one client, as many pooled connections as threads
    direct = boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, config=Config(max_pool_connections=THREADS))
    large_keys = [f"large-{n}.bin" for n in range(repeats)]
    random_key = "random.bin"
    started = time.perf_counter()
    local_large = make_data(s3, workdir, size, [*large_keys, random_key], entries)
    print(f"data: {repeats + 1} x {size // MiB} MiB objects, {entries} + {TTFB_OBJECTS} small objects "
          f"in {time.perf_counter() - started:.1f} s", flush=True)
    rng = random.Random(4)
    offsets = [slot * RANDOM_READ for slot in rng.sample(range(size // RANDOM_READ), min(RANDOM_COUNT, size // RANDOM_READ))]

    m: dict[str, list] = {k: [] for k in ("seq_cold", "seq_cold_cpu_per_gib", "seq_reread", "random", "ttfb", "ls_cold", "ls_warm",
                                          "rss_peak_mib", "rss_hwm_mib", "rss_idle_mib", "read_ahead_kib")}
    b: dict[str, list] = {k: [] for k in ("seq_direct", "seq_direct_cpu_per_gib", "local_reread", "random", "ttfb", "ls_local")}
    requests: dict[str, dict] = {}
    read_file(local_large)  # the local baselines read from the page cache
    ls_l(workdir / "local-many")
    with ThreadPoolExecutor(THREADS) as pool:
        direct_parallel(direct, owned.endpoint.proc.pid, random_key, THREADS * PART, pool)  # the direct client's session and connections
        for i in range(repeats):
            mount = owned.mount(Mount.s3xfs(url, workdir / f"mnt{i}", workdir / f"mnt{i}.log"))
            m["read_ahead_kib"].append(read_ahead_kib(mount.path))
            reset_stats(url)
            seq = mount_sequential(mount, owned.endpoint.proc.pid, large_keys[i], size)
            requests.setdefault("sequential", endpoint_stats(url)["requests"])
            m["seq_cold"].append(seq["cold"])
            m["seq_cold_cpu_per_gib"].append(seq["cpu_per_gib"])
            m["seq_reread"].extend(seq["rereads"])
            for k in ("rss_peak_mib", "rss_hwm_mib", "rss_idle_mib"):
                m[k].append(seq[k])
            reset_stats(url)
            m["random"].append(mount_random(mount, random_key, offsets))
            requests.setdefault("random", endpoint_stats(url))
            reset_stats(url)
            m["ttfb"].append(mount_ttfb(mount))
            requests.setdefault("ttfb", endpoint_stats(url)["requests"])
            reset_stats(url)
            m["ls_cold"].append(ls_l(mount.path / "many"))
            m["ls_warm"].append(ls_l(mount.path / "many"))
            requests.setdefault("ls", endpoint_stats(url)["requests"])
            owned.unmount(mount)

            rate, cpu = direct_parallel(direct, owned.endpoint.proc.pid, large_keys[i], size, pool)
            b["seq_direct"].append(rate)
            b["seq_direct_cpu_per_gib"].append(cpu)
            b["local_reread"].extend(size / read_file(local_large)[1] for _ in range(3))
            b["random"].append(direct_random(direct, random_key, offsets))
            b["ttfb"].append(direct_ttfb(direct))
            b["ls_local"].append(ls_l(workdir / "local-many"))
            print(f"repeat {i + 1}/{repeats}: sequential {seq['cold'] / 1e9:.2f} GB/s (direct "
                  f"{b['seq_direct'][-1] / 1e9:.2f}), re-read {seq['reread'] / 1e9:.2f} GB/s, random "
                  f"{m['random'][-1]:.0f}/s (direct {b['random'][-1]:.0f}/s), ls -l {m['ls_cold'][-1]:.2f} s / "
                  f"{m['ls_warm'][-1]:.3f} s, peak RSS {seq['rss_peak_mib']:.0f} MiB", flush=True)
    random_stats = requests.get("random", {})
    requests["random"] = {"requests": random_stats.get("requests", {}), "bytes_out": random_stats.get("bytes_out")}
    memory_fs, memory_fs_cpu, memory_fs_read_ahead = memory_fs_ceiling(owned, workdir, size, repeats)
    med = statistics.median
    return {"mount": {k: med(v) for k, v in m.items() if k != "read_ahead_kib"}
            | {"rss_peak_mib": max(m["rss_peak_mib"]), "read_ahead_kib": m["read_ahead_kib"][0]},
            "baseline": {k: med(v) for k, v in b.items()},
            "memory_fs": memory_fs, "memory_fs_cpu_per_gib": memory_fs_cpu, "memory_fs_read_ahead_kib": memory_fs_read_ahead,
            "runs": {"mount": m, "baseline": b}, "endpoint_requests_first_repeat": requests,
            "random_read": {"reads": len(offsets), "bytes": len(offsets) * RANDOM_READ}}


def rows(r: dict, size: int, entries: int) -> list[tuple[str, str, str, str, str, bool]]:
    m, b = r["mount"], r["baseline"]
    gb = lambda v: f"{v / 1e9:.2f} GB/s"  # noqa: E731
    ms = lambda v: f"{v * 1e3:.1f} ms"  # noqa: E731
    s = lambda v: f"{v:.2f} s" if v >= 0.1 else ms(v)  # noqa: E731
    return [
        (f"sequential read, {size // MiB} MiB, cold", gb(m["seq_cold"]),
         f"{gb(b['seq_direct'])} (boto3, {THREADS} threads x {PART // MiB} MiB ranged GETs)",
         f"{m['seq_cold'] / b['seq_direct']:.2f}", ">= 0.70 of direct", m["seq_cold"] >= 0.7 * b["seq_direct"]),
        (f"re-read, {size // MiB} MiB, page cache kept", gb(m["seq_reread"]),
         f"{gb(b['local_reread'])} (local file, page cache)", f"{m['seq_reread'] / b['local_reread']:.2f}",
         ">= 2 GB/s", m["seq_reread"] >= 2e9),
        (f"random {RANDOM_READ // 1024} KiB preads ({RANDOM_COUNT}, 1 at a time)", f"{m['random']:.0f} reads/s",
         f"{b['random']:.0f} reads/s (boto3 ranged GET each)", f"{m['random'] / b['random']:.2f}", "-", None),
        (f"`ls -l`, {entries:,} entries, cold", s(m["ls_cold"]), f"{s(b['ls_local'])} (local disk, warm)",
         f"{m['ls_cold'] / b['ls_local']:.1f}x", "<= 1 s", m["ls_cold"] <= 1.0),
        (f"`ls -l`, {entries:,} entries, warm", s(m["ls_warm"]), f"{s(b['ls_local'])} (local disk, warm)",
         f"{m['ls_warm'] / b['ls_local']:.1f}x", "<= 0.2 s", m["ls_warm"] <= 0.2),
        (f"time to first byte, {TTFB_SIZE // 1024} KiB object, cold", ms(m["ttfb"]), f"{ms(b['ttfb'])} (boto3 GET of 1 byte)",
         f"{m['ttfb'] / b['ttfb']:.1f}x", "-", None),
        ("peak RSS of the daemon, sequential read", f"{m['rss_peak_mib']:.0f} MiB",
         f"{m['rss_idle_mib']:.0f} MiB (the daemon idle, just mounted)", "-", "<= 300 MiB", m["rss_peak_mib"] <= 300),
    ]


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, Linux {platform.release()}"


def run_owned(name: str, body: Callable[[Path, "Owned"], dict]) -> dict:
    """Run ``body(workdir, owned)`` in a temporary directory; whatever it started (mounts, the
    endpoint) is stopped afterwards, also on Ctrl-C or SIGTERM."""
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        raise SystemExit(f"bench {name}: needs /dev/fuse and fusermount3 (Debian package fuse3)")
    owned = Owned()

    def terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        with tempfile.TemporaryDirectory(prefix=f"s3xfs-bench-{name}-") as tmp:
            try:
                return body(Path(tmp), owned)
            finally:
                owned.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(quick: bool = False) -> dict:
    size = (256 if quick else 1024) * MiB
    entries = 2_000 if quick else 10_000
    repeats = 1 if quick else 3
    result = run_owned("mount", lambda workdir, owned: run(workdir, owned, size, entries, repeats))
    result.update(machine=machine(), quick=quick, size=size, entries=entries, repeats=repeats, mount_options=list(MOUNT_OPTIONS))
    table = rows(result, size, entries)
    result["table"] = [dict(zip(("workload", "s3xfs", "baseline", "ratio", "target", "met"), row)) for row in table]
    print(f"\ns3xfs mount benchmark ({result['machine']}; medians of {repeats} run{'s' if repeats > 1 else ''}, "
          f"each on a fresh mount with {' '.join(MOUNT_OPTIONS)})\n")
    print_ratio_table(table)
    print("\nratio: s3xfs / baseline (for times, how many times longer s3xfs takes)")
    wire = result["endpoint_requests_first_repeat"]
    rnd = wire["random"]
    print(f"\nfor reference: a minimal pyfuse3 filesystem serving {size // MiB} MiB from memory (no fetching; kernel "
          f"read-ahead {result['memory_fs_read_ahead_kib']} KiB) reads at {result['memory_fs'] / 1e9:.2f} GB/s here")
    cores = os.cpu_count() or 1
    cpu_mount, cpu_direct = result["mount"]["seq_cold_cpu_per_gib"], result["baseline"]["seq_direct_cpu_per_gib"]
    cpu_memfs = result["memory_fs_cpu_per_gib"]
    bound = cores * GiB / (cpu_direct + cpu_memfs)
    print(f"CPU per GiB of the cold sequential read (all processes, core-seconds): s3xfs {cpu_mount:.2f} (reader + "
          f"daemon + endpoint), direct {cpu_direct:.2f} (boto3 + endpoint), in-memory pyfuse3 filesystem "
          f"{cpu_memfs:.2f} (reader + daemon)")
    print(f"a mount must do at least the direct fetch's work plus the FUSE delivery's: with {cores} cores fully "
          f"busy that bounds any mount here to {bound / 1e9:.2f} GB/s = {bound / result['baseline']['seq_direct']:.2f} "
          f"of direct; s3xfs at {cpu_mount:.2f} core-s/GiB is bounded to "
          f"{cores * GiB / cpu_mount / 1e9:.2f} GB/s")
    print(f"kernel read-ahead of the s3xfs mount (caps sequential FUSE reads): {result['mount']['read_ahead_kib']} KiB")
    print(f"on the wire (first repeat): sequential read {wire['sequential'].get('GetObject', 0)} GETs; "
          f"{RANDOM_COUNT} random reads {rnd['requests'].get('GetObject', 0)} GETs, "
          f"{(rnd['bytes_out'] or 0) / MiB:.0f} MiB for {result['random_read']['bytes'] / MiB:.0f} MiB read; "
          f"time to first byte of {TTFB_OBJECTS} objects {wire['ttfb'].get('HeadObject', 0)} HEAD + "
          f"{wire['ttfb'].get('ListObjectsV2', 0)} LIST + {wire['ttfb'].get('GetObject', 0)} GET; "
          f"ls -l cold + warm {wire['ls'].get('ListObjectsV2', 0)} LIST")
    save_result("mount", result)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "memory-fs":  # the reference filesystem, run by memory_fs_ceiling()
        serve_memory_fs(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit("usage: python -m bench mount [--quick]")
