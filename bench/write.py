"""s3xfs mount: writes through a real FUSE mount of s3xfs on s3xfs-localzone, each against its limit.

Workloads (issue 5), each with its baseline measured in the same run:

1. sequential write of a new file through the mount (Python writing 1 MiB chunks, timed from open
   to the return of close, which commits the upload), vs the direct limit: boto3 ``upload_fileobj``
   of the same bytes from memory (8 MiB parts, 8 threads, one client); with the daemon's peak RSS
   (VmRSS sampled every 50 ms) and the CPU of every process involved;
2. creating 1,000 files of 4 KiB (open, write, close) in a directory made through the mount, vs
   boto3 ``put_object`` of the same 1,000 objects one at a time, and vs the same on local disk;
3. 1,000 appends of 4 KiB (``open('ab')``, write, close) to one existing file, vs boto3
   ``put_object`` with ``WriteOffsetBytes`` (a directory-bucket append) one at a time.

Every mount is fresh, read-write (default options but for a private ``--staging-dir``), and is
unmounted in ``finally``: SIGTERM to the daemon by PID, then ``fusermount3 -u -z``; the same on
Ctrl-C. What every workload wrote is checked afterwards with boto3 (sizes and content).
"""

from __future__ import annotations

import io
import os
import random
import statistics
import time
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from bench.localzone import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, Endpoint
from bench.mount import (GiB, MiB, CpuMeter, Mount, Owned, RssSampler, endpoint_stats, machine, reset_stats, rss_kib,
                         run_owned)
from bench.report import print_ratio_table, save_result

WRITE_SIZE = 1 * MiB  # the writer's write() size
PART = 8 * MiB  # direct baseline: part size (s3xfs's default --part-size)
THREADS = 8  # direct baseline: parallel part uploads (s3xfs uploads up to 8 parts per file at once)
SMALL_FILES = 1_000
SMALL_SIZE = 4 * 1024
APPENDS = 1_000
APPEND_SIZE = 4 * 1024
SEQUENTIAL_TARGET = 0.60  # of the direct upload


def mount_options(staging: Path) -> tuple[str, ...]:
    return ("--staging-dir", str(staging))


# --- the workloads through the mount -----------------------------------------------------------

def write_file(path: Path, data: bytes) -> float:
    """Write ``data`` to a new file in 1 MiB write()s; seconds from open to the return of close."""
    view = memoryview(data)
    started = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for offset in range(0, len(view), WRITE_SIZE):
            f.write(view[offset:offset + WRITE_SIZE])
    return time.perf_counter() - started


def mount_sequential(mount: Mount, endpoint_pid: int, name: str, data: bytes) -> dict:
    idle_kib = rss_kib(mount.pid)
    with RssSampler(mount.pid) as sampler, CpuMeter(mount.pid, endpoint_pid) as cpu:
        elapsed = write_file(mount.path / name, data)
    size = len(data)
    return {"rate": size / elapsed, "cpu_per_gib": cpu.seconds * GiB / size, "rss_idle_mib": idle_kib / 1024,
            "rss_peak_mib": sampler.peak_kib / 1024, "rss_hwm_mib": rss_kib(mount.pid, "VmHWM") / 1024}


def create_files(directory: Path, body: bytes) -> float:
    """open/write/close of SMALL_FILES new files; files per second."""
    started = time.perf_counter()
    for n in range(SMALL_FILES):
        with open(directory / f"f-{n:04d}.bin", "wb", buffering=0) as f:
            f.write(body)
    return SMALL_FILES / (time.perf_counter() - started)


def mount_appends(path: Path, body: bytes) -> float:
    """open('ab')/write/close, APPENDS times, on an existing file; appends per second."""
    os.stat(path)  # the file's lookup is not part of it
    started = time.perf_counter()
    for _ in range(APPENDS):
        with open(path, "ab", buffering=0) as f:
            f.write(body)
    return APPENDS / (time.perf_counter() - started)


# --- the baselines ------------------------------------------------------------------------------

def direct_upload(s3, endpoint_pid: int, key: str, data: bytes) -> tuple[float, float]:
    """boto3's managed multipart upload from memory; (bytes per second, CPU seconds per GiB)."""
    config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=THREADS, use_threads=True)
    with CpuMeter(endpoint_pid) as cpu:
        started = time.perf_counter()
        s3.upload_fileobj(io.BytesIO(data), BUCKET, key, Config=config)
        elapsed = time.perf_counter() - started
    return len(data) / elapsed, cpu.seconds * GiB / len(data)


def direct_puts(s3, prefix: str, body: bytes) -> float:
    started = time.perf_counter()
    for n in range(SMALL_FILES):
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}f-{n:04d}.bin", Body=body)
    return SMALL_FILES / (time.perf_counter() - started)


def direct_appends(s3, key: str, body: bytes) -> float:
    offset = s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    started = time.perf_counter()
    for _ in range(APPENDS):
        s3.put_object(Bucket=BUCKET, Key=key, Body=body, WriteOffsetBytes=offset)
        offset += len(body)
    return APPENDS / (time.perf_counter() - started)


# --- checks -------------------------------------------------------------------------------------

def check_object(s3, key: str, data: bytes, samples: int = 4) -> None:
    """The object has ``data``'s size, and ``samples`` random 1 MiB ranges (all of it if small) match."""
    size = s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    if size != len(data):
        raise RuntimeError(f"{key}: {size} bytes in the bucket, {len(data)} written")
    if size <= 8 * MiB:
        got = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        if got != data:
            raise RuntimeError(f"{key}: content differs from what was written")
        return
    rng = random.Random(key)
    for start in [0, size - MiB, *(rng.randrange(0, size - MiB) for _ in range(samples))]:
        got = s3.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={start}-{start + MiB - 1}")["Body"].read()
        if got != data[start:start + MiB]:
            raise RuntimeError(f"{key}: bytes {start}-{start + MiB - 1} differ from what was written")


def check_small(s3, prefix: str, body: bytes) -> None:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []) if item["Size"] == len(body))
    if len(keys) != SMALL_FILES:
        raise RuntimeError(f"{prefix}: {len(keys)} objects of {len(body)} bytes, {SMALL_FILES} written")
    check_object(s3, keys[0], body)


def delete_prefix(s3, prefix: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})


def complaints(log: Path) -> list[str]:
    """What the daemon logged (at the default level, WARNING and above), but for its STOPPING=1
    notification at unmount: the benchmark's notify socket only lives until READY=1."""
    try:
        return [line for line in log.read_text(errors="replace").splitlines()
                if line.strip() and "s3xfs.notify" not in line]
    except OSError:
        return []


# --- the run ------------------------------------------------------------------------------------

def run(workdir: Path, owned: Owned, size: int, repeats: int) -> dict:
    owned.endpoint = Endpoint(workdir / "root")
    url = owned.endpoint.url
    endpoint_pid = owned.endpoint.proc.pid
    s3 = boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, config=Config(max_pool_connections=THREADS))
    staging = workdir / "staging"
    started = time.perf_counter()
    data = os.urandom(size)
    small_body = os.urandom(SMALL_SIZE)
    append_body = os.urandom(APPEND_SIZE)
    print(f"data: {size // MiB} MiB in memory in {time.perf_counter() - started:.1f} s", flush=True)
    s3.put_object(Bucket=BUCKET, Key="warm-up", Body=b"x")  # the direct client's session and first connection

    m: dict[str, list] = {k: [] for k in ("seq", "seq_cpu_per_gib", "rss_peak_mib", "rss_hwm_mib", "rss_idle_mib",
                                          "creates", "appends")}
    b: dict[str, list] = {k: [] for k in ("seq_direct", "seq_direct_cpu_per_gib", "puts", "local_creates", "appends")}
    requests: dict[str, dict] = {}
    logged: list[str] = []
    leftovers: list[str] = []
    for i in range(repeats):
        s3.put_object(Bucket=BUCKET, Key=f"append-{i}.log", Body=append_body)  # the existing file to append to
        s3.put_object(Bucket=BUCKET, Key=f"append-direct-{i}.log", Body=append_body)
        mount = owned.mount(Mount.s3xfs(url, workdir / f"mnt{i}", workdir / f"mnt{i}.log", mount_options(staging)))
        try:
            reset_stats(url)
            seq = mount_sequential(mount, endpoint_pid, f"large-{i}.bin", data)
            requests.setdefault("sequential", endpoint_stats(url)["requests"])
            m["seq"].append(seq["rate"])
            m["seq_cpu_per_gib"].append(seq["cpu_per_gib"])
            for k in ("rss_peak_mib", "rss_hwm_mib", "rss_idle_mib"):
                m[k].append(seq[k])
            (mount.path / f"small-{i}").mkdir()
            reset_stats(url)
            m["creates"].append(create_files(mount.path / f"small-{i}", small_body))
            requests.setdefault("creates", endpoint_stats(url)["requests"])
            reset_stats(url)
            m["appends"].append(mount_appends(mount.path / f"append-{i}.log", append_body))
            requests.setdefault("appends", endpoint_stats(url)["requests"])
        finally:
            owned.unmount(mount)
        logged.extend(f"repeat {i + 1}: {line}" for line in complaints(mount.log))
        if staging.exists():  # staged files are removed once uploaded; anything here is rescued data
            leftovers.extend(str(path) for path in staging.iterdir())

        check_object(s3, f"large-{i}.bin", data)
        check_small(s3, f"small-{i}/", small_body)
        check_object(s3, f"append-{i}.log", append_body * (APPENDS + 1))

        rate, cpu = direct_upload(s3, endpoint_pid, f"large-direct-{i}.bin", data)
        b["seq_direct"].append(rate)
        b["seq_direct_cpu_per_gib"].append(cpu)
        check_object(s3, f"large-direct-{i}.bin", data)
        b["puts"].append(direct_puts(s3, f"small-direct-{i}/", small_body))
        local = workdir / f"local-small-{i}"
        local.mkdir()
        b["local_creates"].append(create_files(local, small_body))
        b["appends"].append(direct_appends(s3, f"append-direct-{i}.log", append_body))
        check_object(s3, f"append-direct-{i}.log", append_body * (APPENDS + 1))
        for key in (f"large-{i}.bin", f"large-direct-{i}.bin"):  # keep the endpoint's disk use small
            s3.delete_object(Bucket=BUCKET, Key=key)
        print(f"repeat {i + 1}/{repeats}: sequential {m['seq'][-1] / 1e9:.2f} GB/s (direct "
              f"{b['seq_direct'][-1] / 1e9:.2f}), creates {m['creates'][-1]:.0f}/s (PUTs {b['puts'][-1]:.0f}/s, "
              f"local {b['local_creates'][-1]:.0f}/s), appends {m['appends'][-1]:.0f}/s (direct "
              f"{b['appends'][-1]:.0f}/s), peak RSS {seq['rss_peak_mib']:.0f} MiB", flush=True)
    med = statistics.median
    return {"mount": {k: med(v) for k, v in m.items()} | {"rss_peak_mib": max(m["rss_peak_mib"])},
            "baseline": {k: med(v) for k, v in b.items()},
            "runs": {"mount": m, "baseline": b}, "endpoint_requests_first_repeat": requests,
            "daemon_log": logged, "staging_leftovers": leftovers}


def rows(r: dict, size: int) -> list[tuple[str, str, str, str, str, bool | None]]:
    m, b = r["mount"], r["baseline"]
    gb = lambda v: f"{v / 1e9:.2f} GB/s"  # noqa: E731
    seq_ratio = m["seq"] / b["seq_direct"]
    creates = f"create {SMALL_FILES:,} files of {SMALL_SIZE // 1024} KiB (open/write/close)"
    return [
        (f"sequential write, {size // MiB} MiB new file, open to close", gb(m["seq"]),
         f"{gb(b['seq_direct'])} (boto3 upload_fileobj, {THREADS} threads x {PART // MiB} MiB parts)",
         f"{seq_ratio:.2f}", f">= {SEQUENTIAL_TARGET:.2f} of direct", seq_ratio >= SEQUENTIAL_TARGET),
        (creates, f"{m['creates']:.0f} files/s", f"{b['puts']:.0f} files/s (boto3 put_object, 1 at a time)",
         f"{m['creates'] / b['puts']:.2f}", "-", None),
        (creates, f"{m['creates']:.0f} files/s", f"{b['local_creates']:.0f} files/s (local disk, no fsync)",
         f"{m['creates'] / b['local_creates']:.3f}", "-", None),
        (f"append {APPEND_SIZE // 1024} KiB x {APPENDS:,} to one file (open 'ab'/write/close)",
         f"{m['appends']:.0f} appends/s", f"{b['appends']:.0f} appends/s (boto3 put_object WriteOffsetBytes, 1 at a time)",
         f"{m['appends'] / b['appends']:.2f}", "-", None),
        ("peak RSS of the daemon, sequential write", f"{m['rss_peak_mib']:.0f} MiB",
         f"{m['rss_idle_mib']:.0f} MiB (the daemon idle, just mounted)", "-", "-", None),
    ]


def main(quick: bool = False) -> dict:
    size = (256 if quick else 1024) * MiB
    repeats = 1 if quick else 3
    result = run_owned("write", lambda workdir, owned: run(workdir, owned, size, repeats))
    result.update(machine=machine(), quick=quick, size=size, repeats=repeats, mount_options=["--staging-dir", "DIR"])
    table = rows(result, size)
    result["table"] = [dict(zip(("workload", "s3xfs", "baseline", "ratio", "target", "met"), row)) for row in table]
    print(f"\ns3xfs write benchmark ({result['machine']}; medians of {repeats} run{'s' if repeats > 1 else ''}, "
          f"each on a fresh read-write mount with default options and its own --staging-dir)\n")
    print_ratio_table(table)
    print("\nratio: s3xfs / baseline")
    cores = os.cpu_count() or 1
    cpu_mount, cpu_direct = result["mount"]["seq_cpu_per_gib"], result["baseline"]["seq_direct_cpu_per_gib"]
    print(f"\nCPU per GiB of the sequential write (core-seconds): s3xfs {cpu_mount:.2f} (writer + daemon + endpoint), "
          f"direct {cpu_direct:.2f} (boto3 + endpoint); with {cores} cores fully busy s3xfs is bounded to "
          f"{cores * GiB / cpu_mount / 1e9:.2f} GB/s, the direct upload to {cores * GiB / cpu_direct / 1e9:.2f} GB/s")
    wire = result["endpoint_requests_first_repeat"]
    show = lambda counts: ", ".join(f"{n} {op}" for op, n in sorted(counts.items())) or "none"  # noqa: E731
    print(f"on the wire (first repeat): sequential write: {show(wire['sequential'])}; {SMALL_FILES} creates: "
          f"{show(wire['creates'])}; {APPENDS} appends: {show(wire['appends'])}")
    if result["staging_leftovers"]:
        print(f"WARNING: {len(result['staging_leftovers'])} files left in the staging directory: "
              f"{result['staging_leftovers'][:5]}")
    if result["daemon_log"]:
        print(f"the daemons logged {len(result['daemon_log'])} lines, first ones:")
        for line in result["daemon_log"][:10]:
            print(f"  {line}")
    save_result("write", result)
    return result


if __name__ == "__main__":
    raise SystemExit("usage: python -m bench write [--quick]")
