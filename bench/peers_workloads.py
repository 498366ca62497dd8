"""The workloads of the peers benchmark (issue 8), as a peer-blind program: fio command lines and
small Python drivers that only see a directory, so every peer (a FUSE mount or the local disk) runs
exactly the same code.

Each workload runs in a child process (``python -m bench.peers_workloads NAME JSON``, or fio), so a
workload stuck in a FUSE request can be cut off by its parent: SIGKILL to the child's process group,
and the mount torn down under it if that is not enough. A driver prints one JSON object on its last
line of output; the figures are timed inside the child, so Python's start-up is never counted.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
KiB = 1024
SEQ_BLOCK = 1 * MiB  # fio's and the writer's request size for sequential I/O
RANDOM_BLOCK = 256 * KiB  # one random read
RANDOM_SEED = 4  # fio --randseed: every peer reads the same offsets
TRAIN_SIZE = 256 * KiB  # one training sample (as bench/training.py)
TRAIN_DIRS = 20
READERS = 8  # a data loader's worker threads (as bench/training.py)
STAT_THREADS = 8  # the stat storm: a parallel `ls -lR`, a build tool or rsync checking mtimes
TTFB_SIZE = 64 * KiB
TINY_BODY = b"0123456789abcdef"  # the ls/find/stat objects: only their names matter
TREE_DIRS = 100  # the find tree: 10,000 objects in 100 directories at full scale


@dataclass(frozen=True)
class Workload:
    """One measured thing; ``better`` says which way its value improves."""

    name: str
    label: str
    unit: str  # "bytes/s", "reads/s", "files/s", "stats/s", "seconds"
    better: str  # "higher" or "lower"
    uses_fio: bool = False
    cold: bool = True  # run on a fresh mount after dropping the kernel's caches

    def performance(self, value: float) -> float:
        """A higher-is-better figure for ratios: times become their inverse."""
        return value if self.better == "higher" else 1.0 / value


WORKLOADS: tuple[Workload, ...] = (
    Workload("seq_read_1", "sequential read, 1 job", "bytes/s", "higher", uses_fio=True),
    Workload("seq_read_4", "sequential read, 4 jobs", "bytes/s", "higher", uses_fio=True),
    Workload("rand_read", "random 256 KiB reads", "reads/s", "higher", uses_fio=True),
    Workload("seq_write", "sequential write, until in the bucket", "bytes/s", "higher"),
    Workload("ls_l", "`ls -l` of one directory", "seconds", "lower"),
    Workload("find", "`find -type f` over a tree", "seconds", "lower"),
    Workload("epoch1", "training epoch 1, 8 readers", "files/s", "higher"),
    Workload("epoch2", "training epoch 2, same mount", "files/s", "higher", cold=False),
    Workload("stat_storm", "stat storm, 8 threads", "stats/s", "higher"),
    Workload("ttfb", "time to first byte", "seconds", "lower"),
)
BY_NAME = {w.name: w for w in WORKLOADS}


@dataclass(frozen=True)
class Scale:
    """Sizes of the data sets; ``Scale.of(1.0)`` is the issue's: 1 GiB, 10,000 files, 2,000 samples."""

    large: int  # bytes of the file read sequentially and randomly, and of the written file
    entries: int  # files in the `ls -l` directory (also the stat storm's pool)
    tree: int  # files in the `find` tree
    train: int  # training samples of 256 KiB
    random_reads: int  # 256 KiB reads of the random workload
    stats: int  # files the stat storm stats
    ttfb: int  # small objects opened for time to first byte

    @classmethod
    def of(cls, factor: float) -> "Scale":
        if not 0 < factor <= 1:
            raise ValueError(f"scale must be in (0, 1], not {factor}")
        large = max(4, round(1024 * factor / 4) * 4) * MiB  # a multiple of 4 MiB: 4 jobs read whole MiBs
        return cls(large=large, entries=max(20, round(10_000 * factor)), tree=max(20, round(10_000 * factor)),
                   train=max(2 * READERS, round(2_000 * factor)),
                   random_reads=min(max(8, round(400 * factor)), large // RANDOM_BLOCK),
                   stats=max(20, round(2_000 * factor)), ttfb=20)

    def describe(self) -> str:
        size = f"{self.large // MiB} MiB" if self.large < 1024 * MiB else f"{self.large / (1024 * MiB):g} GiB"
        return (f"{size} file; {self.random_reads} random reads; `ls -l` of {self.entries:,} files; `find` over "
                f"{self.tree:,} files in {min(TREE_DIRS, self.tree)} directories; {self.train:,} training samples of "
                f"{TRAIN_SIZE // KiB} KiB in {TRAIN_DIRS} directories; stat of {self.stats:,} files; first byte of "
                f"{self.ttfb} objects of {TTFB_SIZE // KiB} KiB")


# --- the data sets' names (the same in both buckets and on local disk) ---------------------------

LARGE = "large.bin"
MANY = "many"
TREE = "tree"
TRAIN = "train"
TTFB = "ttfb"
WRITES = "writes"


def many_names(n: int) -> list[str]:
    return [f"file-{i:05d}.txt" for i in range(n)]


def tree_names(n: int) -> list[str]:
    dirs = min(TREE_DIRS, n)
    return [f"d{i % dirs:03d}/obj-{i:05d}.txt" for i in range(n)]


def train_names(n: int) -> list[str]:
    return [f"d{i % TRAIN_DIRS:02d}/sample-{i:05d}.bin" for i in range(n)]


def ttfb_names(n: int) -> list[str]:
    return [f"obj-{i:02d}.bin" for i in range(n)]


def stat_names(scale: Scale) -> list[str]:
    """The stat storm's files: a fixed sample of the `ls -l` directory, in a fixed shuffled order."""
    names = many_names(scale.entries)
    return random.Random(7).sample(names, min(scale.stats, len(names)))


# --- fio -------------------------------------------------------------------------------------------

def fio_command(workload: str, path: Path, scale: Scale) -> list[str]:
    """fio reading ``path`` (never writing it: --readonly), psync engine, through the page cache as
    an application would."""
    common = ["fio", "--output-format=json", "--ioengine=psync", "--readonly", f"--filename={path}",
              f"--name={workload}", "--group_reporting"]
    if workload == "seq_read_1":
        return [*common, "--rw=read", f"--bs={SEQ_BLOCK}", f"--size={scale.large}", "--numjobs=1"]
    if workload == "seq_read_4":
        quarter = scale.large // 4
        return [*common, "--rw=read", f"--bs={SEQ_BLOCK}", f"--size={quarter}", f"--offset_increment={quarter}",
                "--numjobs=4"]
    if workload == "rand_read":
        return [*common, "--rw=randread", f"--bs={RANDOM_BLOCK}", f"--size={scale.large}",
                f"--io_size={scale.random_reads * RANDOM_BLOCK}", f"--randseed={RANDOM_SEED}", "--numjobs=1"]
    raise ValueError(f"no fio job for {workload!r}")


def parse_fio(workload: str, output: str, scale: Scale) -> dict[str, Any]:
    """The figure of a fio run (bytes/s, or reads/s for random reads), checked for errors and short reads."""
    try:
        report = json.loads(output[output.index("{"):])
    except ValueError:
        raise RuntimeError(f"fio printed no JSON report: {output[-300:]!r}") from None
    job = report["jobs"][0]
    if job.get("error"):
        raise RuntimeError(f"fio job error {job['error']}")
    read = job["read"]
    expected = scale.random_reads * RANDOM_BLOCK if workload == "rand_read" else scale.large
    if read["io_bytes"] != expected:
        raise RuntimeError(f"fio read {read['io_bytes']} bytes, expected {expected}")
    seconds = read["runtime"] / 1000  # milliseconds, all jobs together
    if seconds <= 0:
        seconds = 0.0005  # below fio's resolution: at most half a millisecond
    value = (expected // RANDOM_BLOCK) / seconds if workload == "rand_read" else expected / seconds
    return {"value": value, "seconds": seconds, "bytes": expected,
            "latency_p50_ms": read.get("clat_ns", {}).get("percentile", {}).get("50.000000", 0) / 1e6}


# --- the Python drivers (each runs in a child process) ---------------------------------------------

def drive_write(path: str, size: int, fsync: bool) -> dict[str, Any]:
    """Write ``size`` bytes to a new file in 1 MiB write()s, open to the return of close; on local
    disk fsync first, so the bytes are as safe as in a bucket."""
    block = memoryview(os.urandom(SEQ_BLOCK))
    opened_at = time.time()
    started = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for offset in range(0, size, SEQ_BLOCK):
            f.write(block[:min(SEQ_BLOCK, size - offset)])
        if fsync:
            os.fsync(f.fileno())
    seconds = time.perf_counter() - started
    return {"value": size / seconds, "seconds": seconds, "opened_at": opened_at, "bytes": size}


def drive_ls(path: str, expected: int) -> dict[str, Any]:
    started = time.perf_counter()
    out = subprocess.run(["ls", "-l", path], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    listed = sum(1 for line in out.stdout.splitlines() if line[:1] in "-dl")
    if listed != expected:
        raise RuntimeError(f"ls -l listed {listed} entries, expected {expected}")
    return {"value": seconds, "seconds": seconds}


def drive_find(path: str, expected: int) -> dict[str, Any]:
    started = time.perf_counter()
    out = subprocess.run(["sh", "-c", 'find "$1" -type f | wc -l', "find", path], capture_output=True, text=True,
                         check=True)
    seconds = time.perf_counter() - started
    if int(out.stdout.strip()) != expected:
        raise RuntimeError(f"find found {out.stdout.strip()} files, expected {expected}")
    return {"value": seconds, "seconds": seconds}


def _read_whole(path: str) -> int:
    """What a data loader does with a sample: open, read it all, close."""
    with open(path, "rb", buffering=0) as f:
        return len(f.readall())


def drive_epoch(root: str, files: int, seed: int) -> dict[str, Any]:
    """Every sample once, in a random order, by READERS threads; files per second."""
    order = [os.path.join(root, name) for name in train_names(files)]
    random.Random(seed).shuffle(order)
    started = time.perf_counter()
    with ThreadPoolExecutor(READERS) as pool:
        sizes = list(pool.map(_read_whole, order))
    seconds = time.perf_counter() - started
    short = sum(1 for size in sizes if size != TRAIN_SIZE)
    if short:
        raise RuntimeError(f"{short} of {files} samples did not read as {TRAIN_SIZE} bytes")
    return {"value": files / seconds, "seconds": seconds}


def drive_stat(root: str, names: list[str], size: int) -> dict[str, Any]:
    """os.stat of every name by STAT_THREADS threads, with no listing first: each one a lookup."""
    paths = [os.path.join(root, name) for name in names]
    started = time.perf_counter()
    with ThreadPoolExecutor(STAT_THREADS) as pool:
        sizes = list(pool.map(lambda p: os.stat(p).st_size, paths))
    seconds = time.perf_counter() - started
    wrong = sum(1 for s in sizes if s != size)
    if wrong:
        raise RuntimeError(f"{wrong} of {len(paths)} stats gave a size other than {size}")
    return {"value": len(paths) / seconds, "seconds": seconds}


def drive_ttfb(root: str, names: list[str]) -> dict[str, Any]:
    """Open + read 1 byte of each never-opened object in turn; the median time."""
    times = []
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        with open(os.path.join(root, name), "rb", buffering=0) as f:
            if len(f.read(1)) != 1:
                raise RuntimeError(f"{name}: no first byte")
        times.append(time.perf_counter() - t0)
    return {"value": statistics.median(times), "seconds": time.perf_counter() - started, "times": times}


DRIVERS = {"write": drive_write, "ls": drive_ls, "find": drive_find, "epoch": drive_epoch, "stat": drive_stat,
           "ttfb": drive_ttfb}


def driver_command(driver: str, **kwargs: Any) -> list[str]:
    return [sys.executable, "-m", "bench.peers_workloads", driver, json.dumps(kwargs)]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in DRIVERS:
        print(f"usage: python -m bench.peers_workloads {{{','.join(DRIVERS)}}} JSON", file=sys.stderr)
        return 2
    try:
        result = DRIVERS[argv[0]](**json.loads(argv[1]))
    except (OSError, RuntimeError, subprocess.CalledProcessError, ValueError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
