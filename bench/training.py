"""s3xfs mount: the local disk caches (issue 6), on a training job's reads and on ``find``.

Workloads, each with its baselines measured in the same run:

1. A training epoch: 2,000 files of 256 KiB in 20 directories, read once each in a random order by
   8 threads (open, read the whole file, close), with 4 ms of first-byte latency injected by the
   endpoint during the measured phases (a remote bucket; uploads run without it). In files/s:
   a. epoch 1 on a fresh mount with ``--cache DIR --metadata-ttl 3600 --read-only``, cache empty;
   b. epoch 2 on the same mount (the kernel page cache may serve it);
   c. epoch 2 after unmount + remount of the same cache dir: a restarted training job, which only
      the disk cache and the persistent metadata cache can help (the kernel's caches are dropped
      first when running as root);
   d. epoch 1 (and 2) on a mount without ``--cache``, for reference;
   e. the same files on local disk: page cache warm, and after dropping the kernel's caches.
   The endpoint's request counts (GET, LIST, HEAD) are printed for each phase: epoch 2 after the
   remount should send next to none.
2. ``find MOUNT -type f | wc -l`` over 100,000 tiny objects in 100 directories: on a fresh mount
   without ``--cache``, on a first mount with ``--cache`` (which fills the metadata cache), and on a
   remount of that cache dir within the TTL (which should send no LIST at all); the same tree on
   local disk for reference. The count is checked against the number of objects.

Figures are medians of 3 repeats, each with fresh mounts and a fresh cache dir (``--quick``: one
repeat of 400 files and 10,000 objects, about 30 s). Results also go to ``bench/results/training.json``.

The endpoint stands in for a remote service: before each remote phase its files are read, so what
dropping the kernel's caches takes away is only the client machine's memory, never the "bucket's".
Every mount is read-only and stopped in ``finally`` (SIGTERM to the daemon by PID, then
``fusermount3 -u -z``), as in ``bench/mount.py``, whose scaffolding this reuses.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from bench.localzone import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, Endpoint
from bench.mount import CpuMeter, MiB, Mount, Owned, RssSampler, endpoint_stats, machine, reset_stats, run_owned
from bench.write import complaints
from bench.report import print_table, save_result

KiB = 1024
FILE_SIZE = 256 * KiB  # one training sample
TRAIN_DIRS = 20
READERS = 8  # a data loader's worker threads
LATENCY_MS = 4.0  # first-byte latency of every S3 response during measured phases
METADATA_TTL = "3600"  # a training job trusts its dataset for the length of a run
TREE_DIRS = 100
TINY_BODY = b"0123456789abcdef"  # the find tree's objects: only their names matter
UPLOAD_PROCESSES = 3  # boto3 signs in Python: several processes put small objects faster than one
UPLOAD_THREADS = 8
CONTENT_CHECKS = 20  # files compared byte for byte with their local twins after a cached epoch
REMOUNT_OVER_EPOCH1_TARGET = 10.0
REMOUNT_OVER_LOCAL_TARGET = 0.5
TRAIN_PREFIX = "train/"
TREE_PREFIX = "tree/"


# --- the endpoint and the machine ----------------------------------------------------------------

def set_latency(url: str, ms: float) -> None:
    """Change the endpoint's injected first-byte latency at run time (its admin faults API)."""
    request = urllib.request.Request(f"{url}/_localzone/faults", data=json.dumps({"latency_ms": ms}).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def drop_caches() -> bool:
    """Write back and drop the kernel's page, dentry and inode caches (root only), as a restarted
    job on a machine that ran other work would find them; whether it was done."""
    if os.geteuid() != 0:
        return False
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def warm(root: Path) -> None:
    """Read every file under ``root`` (the endpoint's storage): the "remote" stays in memory."""
    for directory, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError), open(os.path.join(directory, name), "rb", buffering=0) as f:
                while f.read(MiB):
                    pass


def disk_usage(root: Path) -> int:
    """Bytes allocated under ``root`` (like ``du -s``): what the disk cache holds."""
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


def mount_options(prefix: str, cache: Path | None) -> tuple[str, ...]:
    options = ("--read-only", "--metadata-ttl", METADATA_TTL, "--prefix", prefix)
    return options + (("--cache", str(cache)) if cache is not None else ())


@contextlib.contextmanager
def mounted(owned: Owned, url: str, mountpoint: Path, log: Path, options: tuple[str, ...]) -> Iterator[tuple[Mount, dict]]:
    """A fresh s3xfs mount, always unmounted afterwards; with what its start cost (seconds from
    exec to READY=1, and the requests sent meanwhile, without injected latency)."""
    mount = Mount.s3xfs(url, mountpoint, log, options)
    try:
        reset_stats(url)
        started = time.perf_counter()
        owned.mount(mount)
        yield mount, {"start_seconds": time.perf_counter() - started, "requests": endpoint_stats(url)["requests"]}
    finally:
        if mount in owned.mounts:
            owned.unmount(mount)


@contextlib.contextmanager
def measured(url: str, daemon: int, endpoint: int) -> Iterator[dict[str, Any]]:
    """One measured phase: the endpoint's latency on and its counters from zero; afterwards the
    yielded dict also holds the requests the phase sent, the daemon's peak RSS and the CPU time of
    every process involved (on few cores, what bounds a rate)."""
    phase: dict[str, Any] = {}
    reset_stats(url)
    set_latency(url, LATENCY_MS)
    try:
        children = children_cpu()
        with RssSampler(daemon) as sampler, CpuMeter(daemon, endpoint) as cpu:
            yield phase
        phase["rss_peak_mib"] = sampler.peak_kib / 1024
        phase["cpu_seconds"] = cpu.seconds + children_cpu() - children
    finally:
        set_latency(url, 0)
    phase["requests"] = endpoint_stats(url)["requests"]


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (find, wc)."""
    t = os.times()
    return t.children_user + t.children_system


def local_phase(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A local baseline phase, with its CPU time (this process and its children)."""
    children = children_cpu()
    with CpuMeter() as cpu:
        phase = fn()
    phase["cpu_seconds"] = cpu.seconds + children_cpu() - children
    return phase


# --- data ----------------------------------------------------------------------------------------

def train_names(files: int) -> list[str]:
    return [f"d{n % TRAIN_DIRS:02d}/sample-{n:05d}.bin" for n in range(files)]


def tree_names(objects: int) -> list[str]:
    return [f"d{n % TREE_DIRS:03d}/obj-{n:06d}.txt" for n in range(objects)]


def upload_training(s3: Any, local: Path, names: list[str]) -> None:
    """Each sample's own random bytes, to the bucket and to a local twin (the local baseline)."""
    def one(name: str) -> None:
        body = os.urandom(FILE_SIZE)
        path = local / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        s3.put_object(Bucket=BUCKET, Key=TRAIN_PREFIX + name, Body=body)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, names))


def _put_tiny(args: tuple[str, list[str]]) -> int:
    """In a worker process: put these tiny objects with a few threads over one client."""
    url, keys = args
    # Parameter validation and checksums off: for 16-byte bodies they are most of the client's work.
    config = Config(max_pool_connections=UPLOAD_THREADS, parameter_validation=False,
                    request_checksum_calculation="when_required")
    s3 = boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, config=config)
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=BUCKET, Key=key, Body=TINY_BODY), keys))
    return len(keys)


def upload_tree(url: str, local: Path, names: list[str]) -> None:
    """The find tree: the endpoint has no bulk load, so several processes (forked: ``python -m
    bench`` can't be re-imported by spawn) of boto3 threads; and its local twin."""
    keys = [TREE_PREFIX + name for name in names]
    chunks = [(url, keys[i::UPLOAD_PROCESSES]) for i in range(UPLOAD_PROCESSES)]
    with ProcessPoolExecutor(UPLOAD_PROCESSES, mp_context=multiprocessing.get_context("fork")) as pool:
        uploaded = sum(pool.map(_put_tiny, chunks))
    assert uploaded == len(names)
    for n in range(TREE_DIRS):
        (local / f"d{n:03d}").mkdir(parents=True, exist_ok=True)
    for name in names:
        (local / name).write_bytes(TINY_BODY)


# --- the workloads -------------------------------------------------------------------------------

def read_whole(path: Path) -> int:
    """What a data loader does with a sample: open, read it all, close."""
    with open(path, "rb", buffering=0) as f:
        return len(f.readall())


def epoch(root: Path, names: list[str], seed: int) -> dict[str, float]:
    """Every file once, in a random order, by READERS threads; files per second."""
    order = names[:]
    random.Random(seed).shuffle(order)
    started = time.perf_counter()
    with ThreadPoolExecutor(READERS) as pool:
        sizes = list(pool.map(lambda name: read_whole(root / name), order))
    elapsed = time.perf_counter() - started
    short = sum(1 for size in sizes if size != FILE_SIZE)
    if short:
        raise RuntimeError(f"{short} of {len(order)} files under {root} did not read as {FILE_SIZE} bytes")
    return {"rate": len(order) / elapsed, "seconds": elapsed}


def same_content(mount_root: Path, local_root: Path, names: list[str], seed: int) -> int:
    """How many of CONTENT_CHECKS sampled files differ from their local twins (0 is right)."""
    sample = random.Random(seed).sample(names, min(CONTENT_CHECKS, len(names)))
    return sum(1 for name in sample if (mount_root / name).read_bytes() != (local_root / name).read_bytes())


def find_files(root: Path) -> dict[str, float]:
    """``find ROOT -type f | wc -l``: seconds, and the count it printed."""
    started = time.perf_counter()
    out = subprocess.run(["sh", "-c", 'find "$1" -type f | wc -l', "find", str(root)],
                         capture_output=True, text=True, check=True)
    return {"seconds": time.perf_counter() - started, "count": int(out.stdout.strip())}


# --- the runs ------------------------------------------------------------------------------------

class Run:
    """What one benchmark run shares: the endpoint and the work directory."""

    def __init__(self, workdir: Path, owned: Owned) -> None:
        self.workdir = workdir
        self.owned = owned
        self.endpoint_root = workdir / "root"
        owned.endpoint = Endpoint(self.endpoint_root)
        self.url = owned.endpoint.url
        self.endpoint_pid = owned.endpoint.proc.pid
        self.dropped: list[bool] = []
        self.logged: list[str] = []
        self.mounts = 0

    def mount(self, name: str, prefix: str, cache: Path | None) -> contextlib.AbstractContextManager[tuple[Mount, dict]]:
        options = mount_options(prefix, cache)
        self.mounts += 1
        log = self.workdir / f"{self.mounts:02d}-{name}.log"
        return self._collecting(log, mounted(self.owned, self.url, self.workdir / f"mnt-{name}", log, options))

    @contextlib.contextmanager
    def _collecting(self, log: Path, inner: contextlib.AbstractContextManager[tuple[Mount, dict]]) -> Iterator[tuple[Mount, dict]]:
        try:
            with inner as value:
                yield value
        finally:
            self.logged.extend(f"{log.name}: {line}" for line in complaints(log))

    def drop(self) -> bool:
        """Drop the kernel's caches, then give the endpoint back its memory."""
        dropped = drop_caches()
        self.dropped.append(dropped)
        warm(self.endpoint_root)
        return dropped


def training_repeat(run: Run, local: Path, names: list[str], repeat: int) -> dict[str, dict]:
    phases: dict[str, dict] = {}
    seed = 1000 * repeat

    def remote_epoch(mount: Mount, key: str, epoch_seed: int, at_mount: dict | None = None) -> None:
        with measured(run.url, mount.pid, run.endpoint_pid) as phase:
            phase.update(epoch(mount.path, names, epoch_seed))
        if at_mount is not None:
            phase["mount"] = at_mount
        phases[key] = phase

    warm(run.endpoint_root)
    with run.mount("train-nocache", TRAIN_PREFIX, None) as (mount, at_mount):
        remote_epoch(mount, "nocache_epoch1", seed + 1, at_mount)
        remote_epoch(mount, "nocache_epoch2", seed + 2)

    cache_dir = run.workdir / f"cache-train-{repeat}"
    with run.mount("train-cache", TRAIN_PREFIX, cache_dir) as (mount, at_mount):
        remote_epoch(mount, "cache_epoch1", seed + 1, at_mount)
        remote_epoch(mount, "cache_epoch2_same", seed + 2)
    phases["cache_epoch2_same"]["cache_bytes"] = disk_usage(cache_dir)
    dropped = run.drop()
    with run.mount("train-cache", TRAIN_PREFIX, cache_dir) as (mount, at_mount):
        remote_epoch(mount, "cache_epoch2_remount", seed + 2, at_mount)
        phases["cache_epoch2_remount"]["dropped_caches"] = dropped
        phases["cache_epoch2_remount"]["content_mismatches"] = same_content(mount.path, local, names, seed)

    epoch(local, names, seed)  # the local files' pages in memory, whatever ran before
    phases["local_warm"] = local_phase(lambda: epoch(local, names, seed + 2))
    if drop_caches():
        phases["local_cold"] = local_phase(lambda: epoch(local, names, seed + 2))
        warm(run.endpoint_root)
    return phases


def find_repeat(run: Run, local: Path, objects: int, repeat: int) -> dict[str, dict]:
    phases: dict[str, dict] = {}

    def remote_find(mount: Mount, key: str, at_mount: dict | None = None) -> None:
        with measured(run.url, mount.pid, run.endpoint_pid) as phase:
            phase.update(find_files(mount.path))
        phase["count_ok"] = phase["count"] == objects
        if at_mount is not None:
            phase["mount"] = at_mount
        phases[key] = phase

    warm(run.endpoint_root)
    with run.mount("tree-nocache", TREE_PREFIX, None) as (mount, at_mount):
        remote_find(mount, "nocache_fresh", at_mount)
        remote_find(mount, "nocache_again")

    cache_dir = run.workdir / f"cache-tree-{repeat}"
    with run.mount("tree-cache", TREE_PREFIX, cache_dir) as (mount, at_mount):
        remote_find(mount, "cache_first", at_mount)
    phases["cache_first"]["cache_bytes"] = disk_usage(cache_dir)
    dropped = run.drop()
    with run.mount("tree-cache", TREE_PREFIX, cache_dir) as (mount, at_mount):
        remote_find(mount, "cache_remount", at_mount)
        phases["cache_remount"]["dropped_caches"] = dropped

    find_files(local)
    phases["local_warm"] = local_phase(lambda: find_files(local))
    phases["local_warm"]["count_ok"] = phases["local_warm"]["count"] == objects
    return phases


def run_all(workdir: Path, owned: Owned, files: int, objects: int, repeats: int) -> dict:
    run = Run(workdir, owned)
    s3 = boto3.client("s3", endpoint_url=run.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, config=Config(max_pool_connections=16))
    names = train_names(files)
    local_train = workdir / "local-train"
    started = time.perf_counter()
    upload_training(s3, local_train, names)
    print(f"data: {files:,} x {FILE_SIZE // KiB} KiB in {TRAIN_DIRS} directories, uploaded and written locally "
          f"in {time.perf_counter() - started:.1f} s", flush=True)
    training = []
    for repeat in range(repeats):
        training.append(training_repeat(run, local_train, names, repeat))
        print(f"training repeat {repeat + 1}/{repeats}: " + ", ".join(
            f"{key} {phase['rate']:.0f} files/s" for key, phase in training[-1].items() if "rate" in phase), flush=True)

    local_tree = workdir / "local-tree"
    started = time.perf_counter()
    upload_tree(run.url, local_tree, tree_names(objects))  # after the training phases: their endpoint stays small
    print(f"data: {objects:,} objects of {len(TINY_BODY)} bytes in {TREE_DIRS} directories, uploaded and written "
          f"locally in {time.perf_counter() - started:.1f} s", flush=True)
    find = []
    for repeat in range(repeats):
        find.append(find_repeat(run, local_tree, objects, repeat))
        print(f"find repeat {repeat + 1}/{repeats}: " + ", ".join(
            f"{key} {phase['seconds']:.2f} s" for key, phase in find[-1].items() if "seconds" in phase), flush=True)
    return {"training_runs": training, "find_runs": find, "dropped_caches": run.dropped, "daemon_log": run.logged}


# --- the report ----------------------------------------------------------------------------------

def medians(runs: list[dict[str, dict]], field: str) -> dict[str, float]:
    keys = {key for phases in runs for key, phase in phases.items() if field in phase}
    return {key: statistics.median(phases[key][field] for phases in runs if key in phases) for key in sorted(keys)}


def requests_cell(phase: dict | None) -> tuple[str, str, str, str]:
    """GET, LIST, HEAD and every other operation the endpoint counted."""
    if phase is None or "requests" not in phase:
        return ("-", "-", "-", "-")
    counts = dict(phase["requests"])
    get, lists, head = (counts.pop(op, 0) for op in ("GetObject", "ListObjectsV2", "HeadObject"))
    other = ", ".join(f"{n} {op}" for op, n in sorted(counts.items())) or "-"
    return (str(get), str(lists), str(head), other)


def duration(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms"


def report(result: dict) -> None:
    files, objects = result["files"], result["objects"]
    training, find = result["training_runs"], result["find_runs"]
    rate = medians(training, "rate")
    cpu = medians(training, "cpu_seconds")
    first = training[0]
    dropped = any(result["dropped_caches"]) or "local_cold" in first
    mib = lambda b: f"{b / MiB:.0f} MiB"  # noqa: E731

    print(f"\ns3xfs training benchmark ({result['machine']}; medians of {result['repeats']} run"
          f"{'s' if result['repeats'] > 1 else ''}; {LATENCY_MS:g} ms first-byte latency injected by the endpoint "
          f"during measured phases; mounts --read-only --metadata-ttl {METADATA_TTL}, default cache size)\n")
    print(f"1. one epoch: {files:,} files of {FILE_SIZE // KiB} KiB in {TRAIN_DIRS} directories, read once each "
          f"in a random order by {READERS} threads (open, read all, close); requests: first run\n")
    labels = [
        ("cache_epoch1", "a. epoch 1, fresh mount with --cache (empty cache dir)"),
        ("cache_epoch2_same", "b. epoch 2, same mount"),
        ("cache_epoch2_remount", "c. epoch 2 after unmount + remount of the cache dir"
                                 + (" (kernel caches dropped)" if dropped else " (kernel caches NOT dropped: not root)")),
        ("nocache_epoch1", "d. epoch 1, mount without --cache"),
        ("nocache_epoch2", "   epoch 2, same mount without --cache (kernel page cache)"),
        ("local_warm", "e. local disk, page cache warm"),
        ("local_cold", "   local disk, after dropping the kernel's caches"),
    ]
    rows = []
    for key, label in labels:
        phase = first.get(key)
        if key in rate:
            peak = f"{phase['rss_peak_mib']:.0f} MiB" if phase and "rss_peak_mib" in phase else "-"
            rows.append((label, f"{rate[key]:.0f}", f"{cpu[key] * 1e3 / files:.2f}", *requests_cell(phase), peak))
        elif key == "local_cold":
            rows.append((label, "not measured: not root", "-", "-", "-", "-", "-", "-"))
    print_table(("phase", "files/s", "CPU ms/file", "GETs", "LISTs", "HEADs", "other requests", "daemon peak RSS (its children included)"), rows)
    print("\nCPU ms/file: core-milliseconds per file of every process involved (readers, daemon and its block writer, endpoint)")

    def ratio_row(label: str, top: str, bottom: str, target: float | None) -> tuple[str, ...]:
        if top not in rate or bottom not in rate:  # local_cold: measured as root only
            return (label, "-", f">= {target:g}" if target else "-", "-")
        value = rate[top] / rate[bottom]
        met = "-" if target is None else "yes" if value >= target else "NO"
        return (label, f"{value:.2f}", f">= {target:g}" if target else "-", met)

    print()
    print_table(("ratio (files/s over files/s)", "value", "target", "met?"), [
        ratio_row("epoch 2 after remount / epoch 1 (--cache)", "cache_epoch2_remount", "cache_epoch1",
                  REMOUNT_OVER_EPOCH1_TARGET),
        ratio_row("epoch 2 after remount / local disk, warm", "cache_epoch2_remount", "local_warm",
                  REMOUNT_OVER_LOCAL_TARGET),
        ratio_row("epoch 2 same mount / epoch 1 (--cache)", "cache_epoch2_same", "cache_epoch1", None),
        ratio_row("epoch 2 same mount / local disk, warm", "cache_epoch2_same", "local_warm", None),
        ratio_row("epoch 1 with --cache / epoch 1 without (the cost of filling the cache)", "cache_epoch1",
                  "nocache_epoch1", None),
        ratio_row("epoch 2 after remount / local disk, caches dropped", "cache_epoch2_remount", "local_cold", None),
    ])
    if "cache_epoch2_same" in first:
        remount = first.get("cache_epoch2_remount", {})
        at_mount = remount.get("mount", {})
        print(f"\ndisk cache after epoch 1 + 2: {mib(first['cache_epoch2_same']['cache_bytes'])} for "
              f"{mib(files * FILE_SIZE)} of samples; the remount took {at_mount.get('start_seconds', 0):.2f} s to be "
              f"ready and sent {', '.join(f'{n} {op}' for op, n in sorted(at_mount.get('requests', {}).items())) or 'no request'}; "
              f"{remount.get('content_mismatches', '?')} of {CONTENT_CHECKS} sampled files differed from their local "
              f"twins after epoch 2 on the remount")

    seconds = medians(find, "seconds")
    fcpu = medians(find, "cpu_seconds")
    ffirst = find[0]
    print(f"\n2. `find MOUNT -type f | wc -l` over {objects:,} objects in {TREE_DIRS} directories; "
          f"requests: first run\n")
    flabels = [
        ("nocache_fresh", "fresh mount without --cache"),
        ("nocache_again", "again, same mount (metadata in memory, within the TTL)"),
        ("cache_first", "first mount with --cache (fills the metadata cache)"),
        ("cache_remount", "remount of the same cache dir, within the TTL"
                          + (" (kernel caches dropped)" if dropped else "")),
        ("local_warm", "local disk, warm"),
    ]
    rows = []
    for key, label in flabels:
        phase = ffirst[key]
        counts_ok = all(phases[key]["count_ok"] for phases in find)
        peak = f"{phase['rss_peak_mib']:.0f} MiB" if "rss_peak_mib" in phase else "-"
        cells = requests_cell(phase)
        rows.append((label, duration(seconds[key]), duration(fcpu[key]), f"{phase['count']:,}"
                     + ("" if counts_ok else " WRONG"), cells[1], cells[0], cells[2], cells[3], peak))
    print_table(("phase", "time", "CPU (all processes)", "files found", "LISTs", "GETs", "HEADs", "other requests",
                 "daemon peak RSS (its children included)"), rows)
    remount = ffirst["cache_remount"]
    print(f"\nfind after remount / fresh mount without --cache: "
          f"{seconds['cache_remount'] / seconds['nocache_fresh']:.2f} of the time; "
          f"LIST requests on the remount: {remount['requests'].get('ListObjectsV2', 0)} (target 0); "
          f"metadata cache on disk: {mib(ffirst['cache_first']['cache_bytes'])}; the remount took "
          f"{remount.get('mount', {}).get('start_seconds', 0):.2f} s to be ready")
    print(f"\nkernel caches dropped before the remounts and the local cold epoch: "
          f"{'yes (running as root)' if dropped else 'no (not root)'}")
    if result["daemon_log"]:
        print(f"the daemons logged {len(result['daemon_log'])} lines, first ones:")
        for line in result["daemon_log"][:10]:
            print(f"  {line[:300]}")


def main(quick: bool = False) -> dict:
    files = 400 if quick else 2_000
    objects = 10_000 if quick else 100_000
    repeats = 1 if quick else 3
    result = run_owned("training", lambda workdir, owned: run_all(workdir, owned, files, objects, repeats))
    result.update(machine=machine(), quick=quick, files=files, file_size=FILE_SIZE, objects=objects, repeats=repeats,
                  latency_ms=LATENCY_MS, readers=READERS,
                  mount_options=list(mount_options("PREFIX", Path("DIR"))),
                  medians={"training_rate": medians(result["training_runs"], "rate"),
                           "find_seconds": medians(result["find_runs"], "seconds")})
    report(result)
    save_result("training", result)
    return result


if __name__ == "__main__":
    raise SystemExit("usage: python -m bench training [--quick]")
