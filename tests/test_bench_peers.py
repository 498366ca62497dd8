"""The peers benchmark's pieces (bench/peers*.py) on tiny data, in seconds: the report (tables,
ratios, failures, the explanation of where s3xfs is behind, the chart, the docs block) from a
results JSON shaped exactly like a real run's, fio's figures from a real fio run, and one real
workload through a real s3xfs mount, plus one that hangs and must be cut off, not waited for.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from bench import peers, peers_report
from bench.mount import Owned
from bench.peers_workloads import BY_NAME, WORKLOADS, Scale, fio_command, parse_fio
from bench.training import set_latency
from tests.support.mount import needs_fuse

MiB = 1024 * 1024
TINY = Scale(large=4 * MiB, entries=30, tree=30, train=16, random_reads=4, stats=12, ttfb=3)


# --- the report --------------------------------------------------------------------------------

# Per peer, a value per workload (its unit: bytes/s, reads/s, files/s, stats/s, or seconds). s3fs is
# ahead on `ls -l` (0.05 s against 0.1 s) and nowhere else; rclone-off times out on ttfb at 4 ms.
BASE = {"seq_read_1": 1e9, "seq_read_4": 1.2e9, "rand_read": 500.0, "seq_write": 5e8, "ls_l": 0.1, "find": 0.5,
        "epoch1": 400.0, "epoch2": 4000.0, "stat_storm": 2000.0, "ttfb": 0.002}
FACTOR = {"s3xfs": 1.0, "s3xfs-gp": 0.9, "s3fs": 0.5, "s3fs-cache": 0.6, "rclone-off": 0.4, "rclone-full": 0.7,
          "direct": 2.0, "local": 10.0}


def fake_value(peer: str, workload: str) -> float:
    value = BASE[workload]
    factor = FACTOR[peer]
    if peer == "s3fs" and workload == "ls_l":
        return 0.05
    return value * factor if BY_NAME[workload].better == "higher" else value / factor


def fake_result() -> dict:
    samples = []
    for latency in (0.0, 4.0):
        for repeat in range(3):
            for peer in peers.PEERS:
                for workload in WORKLOADS:
                    # Three runs whose median is the fake value: one slower, one faster, one spot on.
                    spread = (0.5, 1.0, 3.0)[repeat]
                    value = fake_value(peer.name, workload.name) * spread
                    ok = not (peer.name == "rclone-off" and workload.name == "ttfb" and latency == 4.0)
                    requests = {"ListObjectsV2": 10, "HeadObject": 1} if peer.kind == "s3xfs" else \
                        {"HeadObject": 10_000, "ListObjects": 10}
                    samples.append({"peer": peer.name, "workload": workload.name, "latency_ms": latency,
                                    "repeat": repeat, "ok": ok, "value": value if ok else None,
                                    "error": None if ok else "timed out after 5 s (killed)",
                                    "requests": requests if ok else {}, "bytes_out": 1000, "bytes_in": 10,
                                    "cpu": {"daemon": 0.5 if peer.kind == "s3xfs" else 0.1, "endpoint": 0.1,
                                            "client": 0.1}})
    return {"benchmark": "peers", "command": "./dev bench peers --scale 1", "started": "2026-11-22 08:00 UTC",
            "seconds": 1800.0, "machine": {"description": "x86_64, 2 cores (test)", "cores": 2},
            "scale": asdict(Scale.of(1.0)), "scale_factor": 1.0, "scale_text": Scale.of(1.0).describe(), "repeats": 3,
            "latencies_ms": [0.0, 4.0], "peers": [asdict(p) | {"options": list(p.options)} for p in peers.PEERS],
            "workloads": [asdict(w) for w in WORKLOADS], "samples": samples, "interrupted": False,
            "caches_dropped": True}


def row(markdown: str, latency: str, label: str) -> list[str]:
    """The cells of one workload's row in the table of one latency."""
    section = markdown.split(f"**{latency} ms**", 1)[1]
    line = next(line for line in section.splitlines() if line.startswith(f"| {label}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_table_medians_ratios_and_failures():
    result = fake_result()
    text = peers_report.markdown(result)
    names = [p.name for p in peers.PEERS]
    cells = dict(zip(["workload", *names], row(text, "0", "`ls -l` of one directory (10,000 files)")))
    assert cells["s3xfs"] == "100.0 ms"  # the median of 50, 100 and 300 ms
    assert cells["s3fs"] == "50.0 ms (**2.00**)"  # ahead of s3xfs: bold
    assert cells["rclone-off"] == "250.0 ms (0.40)"
    assert cells["direct"] == "50.0 ms (0.50)"  # s3xfs reaches half of the direct limit
    assert cells["local"] == "10.0 ms (0.10)"
    seq = dict(zip(["workload", *names], row(text, "4", "sequential read, 1 job (1 GiB)")))
    assert seq["s3xfs"] == "1.00 GB/s" and seq["s3fs-cache"] == "0.60 GB/s (0.60)"
    ttfb = dict(zip(["workload", *names], row(text, "4", "time to first byte (median of 20)")))
    assert ttfb["rclone-off"] == "**FAILED** (timeout)"
    assert "- rclone (cache off), ttfb, 4 ms, run 1: timed out after 5 s (killed)" in text
    # where s3xfs is behind, and why, from the measured requests and CPU
    behind = [line for line in text.splitlines() if line.startswith("- **")]
    assert len(behind) == 2 and all("`ls -l` of one directory" in line for line in behind)
    assert "s3fs-fuse 2.00x s3xfs (50.0 ms vs 100.0 ms)" in behind[0]
    assert "10,000 HEAD" in behind[0] and "0.50 CPU-seconds" in behind[0]
    assert result["command"] in text and "x86_64, 2 cores (test)" in text
    assert "Load average" not in text  # not recorded: nothing said
    result["load_average"] = [3.5, 1.2]
    assert "Load average at the start and end: 3.5 / 1.2 (busier than its cores" in peers_report.markdown(result)


def test_nowhere_behind_and_the_doc_block(tmp_path: Path):
    result = fake_result()
    result["samples"] = [s for s in result["samples"] if not (s["peer"] == "s3fs" and s["workload"] == "ls_l")]
    text = peers_report.markdown(result)
    assert "s3xfs is ahead of every peer on every workload" in text
    assert "| `ls -l` of one directory (10,000 files) | 100.0 ms | 111.1 ms (0.90) | not run |" in text

    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Earlier\n\nkept\n")
    peers_report.write_doc(result, doc)
    first = doc.read_text()
    assert first.startswith("# Benchmarks\n\n## Earlier\n\nkept\n\n## Against the peers (issue 8)\n")
    assert first.count(peers_report.BEGIN) == 1 and first.count(peers_report.END) == 1
    doc.write_text(first.replace(peers_report.END, peers_report.END + "\n\ntext after the block\n"))
    result["command"] = "./dev bench peers --quick"
    peers_report.write_doc(result, doc)
    second = doc.read_text()
    assert "./dev bench peers --quick" in second and "--scale 1`" not in second
    assert second.split(peers_report.END)[1].strip() == "text after the block"
    assert second.count(peers_report.BEGIN) == 1


def test_chart_is_a_png(tmp_path: Path):
    import matplotlib.image

    path = tmp_path / "chart.png"
    peers_report.chart(fake_result(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(str(path)).shape[:2]
    assert width > 800 and height > 500


def test_the_committed_doc_was_written_by_the_command():
    text = peers_report.DOC.read_text()
    assert text.count(peers_report.BEGIN) == 1 and text.count(peers_report.END) == 1
    block = text.split(peers_report.BEGIN, 1)[1].split(peers_report.END, 1)[0]
    assert block.lstrip().startswith("Command: `./dev bench peers")
    assert peers_report.CHART.name in block and peers_report.CHART.exists()


def test_scale():
    full = Scale.of(1.0)
    assert (full.large, full.entries, full.tree, full.train, full.random_reads) == (1024 * MiB, 10_000, 10_000, 2_000, 400)
    small = Scale.of(0.01)
    assert small.large % (4 * MiB) == 0 and small.random_reads * 256 * 1024 <= small.large
    with pytest.raises(ValueError):
        Scale.of(0)


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed (Debian package fio)")
@pytest.mark.parametrize("workload", ["seq_read_1", "seq_read_4", "rand_read"])
def test_fio_on_a_local_file(tmp_path: Path, workload: str):
    path = tmp_path / "large.bin"
    path.write_bytes(os.urandom(TINY.large))
    out = peers.run_bounded(fio_command(workload, path, TINY), 60, None)
    figures = parse_fio(workload, out, TINY)
    assert figures["bytes"] == (TINY.random_reads * 256 * 1024 if workload == "rand_read" else TINY.large)
    assert figures["value"] > 0
    with pytest.raises(RuntimeError, match="expected"):  # a short read is an error, not a figure
        parse_fio(workload, out, replace(TINY, large=2 * TINY.large, random_reads=2 * TINY.random_reads))


# --- one real workload through s3xfs ---------------------------------------------------------------

@pytest.mark.fuse
@pytest.mark.slow
@needs_fuse
def test_real_workloads_through_s3xfs_and_a_hang_cut_off(tmp_path: Path):
    owned = Owned()
    bench = None
    try:
        bench = peers.Bench(tmp_path, owned, TINY, None, drop_kernel_caches=False)
        bench.generate({peers.DIRECTORY_BUCKET})
        s3xfs = peers.PEER_BY_NAME["s3xfs"]
        samples = bench.unit(s3xfs, ("ls_l",), 0.0, 0) + bench.unit(s3xfs, ("epoch1", "epoch2"), 0.0, 0)
        assert [s["ok"] for s in samples] == [True, True, True], samples
        ls, epoch1, epoch2 = samples
        assert ls["requests"].get("ListObjectsV2", 0) >= 1 and "GetObject" not in ls["requests"]
        assert epoch1["requests"]["GetObject"] >= TINY.train  # every sample fetched once
        assert epoch1["value"] > 0 and epoch1["cpu"]["daemon"] > 0
        direct = bench.unit(peers.PEER_BY_NAME["direct"], ("stat_storm",), 0.0, 0)[0]
        assert direct["ok"] and direct["requests"]["HeadObject"] == TINY.stats

        # A workload stuck in FUSE requests (the endpoint now answers after 8 s) is killed at its
        # time limit and reported as failed; its mount is gone afterwards and its daemon stopped.
        bench.fixed_timeout = 2.0
        with bench.mounted(s3xfs) as mount:
            set_latency(bench.url, 8000)
            try:
                stuck = bench.sample(s3xfs, "ttfb", 8000.0, 0, mount, mount.path, {"peer": "s3xfs"})
            finally:
                set_latency(bench.url, 0)
        assert mount.proc is not None and mount.proc.returncode is not None
        assert not stuck["ok"] and "timed out after 2 s" in stuck["error"]
        assert owned.mounts == [] and not any(os.path.ismount(p) for p in (tmp_path / "mnt").iterdir())
    finally:
        owned.stop()
        if bench is not None:
            bench.close()
    assert owned.endpoint is None
    assert not os.path.exists(bench.storage)
    json.dumps(samples)  # samples are JSON as they are, for bench/results/peers.json
