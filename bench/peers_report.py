"""What the peers benchmark makes of its samples: Markdown tables of medians with every peer's ratio
to s3xfs, the explanation of where s3xfs is behind (from the measured request counts, bytes and CPU),
a PNG chart, and the section of docs/BENCHMARKS.md between its markers.

Everything here reads the results JSON alone (``bench/results/peers.json``), so a report can be
rebuilt from a saved run: ``python -m bench.peers report``.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from bench.peers_workloads import BY_NAME, Workload

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.md"
CHART = ROOT / "docs" / "benchmarks-peers.png"
BEGIN = "<!-- peers:begin (written by ./dev bench peers; do not edit by hand) -->"
END = "<!-- peers:end -->"
SECTION = "## Against the peers (issue 8)"
REFERENCE = "s3xfs"  # the peer every ratio is taken against
LIMITS = ("direct", "local")  # baselines: the ratio shown is s3xfs's fraction of them
BEHIND_MARGIN = 1.05  # a peer more than 5% ahead counts as ahead (below that, run-to-run noise)
OPERATIONS = {"GetObject": "GET", "HeadObject": "HEAD", "ListObjectsV2": "LIST", "ListObjects": "LISTv1",
              "PutObject": "PUT", "UploadPart": "PART", "CreateMultipartUpload": "MPU",
              "CompleteMultipartUpload": "COMPLETE", "CreateSession": "SESSION", "DeleteObject": "DELETE",
              "CopyObject": "COPY"}


# --- medians -------------------------------------------------------------------------------------

Key = tuple[str, str, float]  # (peer, workload, latency_ms)


def group(result: dict[str, Any]) -> dict[Key, list[dict[str, Any]]]:
    groups: dict[Key, list[dict[str, Any]]] = {}
    for sample in result["samples"]:
        groups.setdefault((sample["peer"], sample["workload"], float(sample["latency_ms"])), []).append(sample)
    return groups


def median_of(samples: list[dict[str, Any]]) -> float | None:
    """The median of the successful samples; None when every one failed."""
    values = [s["value"] for s in samples if s["ok"]]
    return statistics.median(values) if values else None


def median_requests(samples: list[dict[str, Any]]) -> dict[str, int]:
    """Per operation, the median count over the successful samples (the endpoint's own counters)."""
    good = [s for s in samples if s["ok"] and s.get("requests") is not None]
    if not good:
        return {}
    ops = {op for s in good for op in s["requests"]}
    counts = {op: round(statistics.median(s["requests"].get(op, 0) for s in good)) for op in ops}
    return {op: n for op, n in counts.items() if n}


def median_field(samples: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for sample in samples:
        value: Any = sample
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if sample["ok"] and isinstance(value, (int, float)):
            values.append(value)
    return statistics.median(values) if values else None


# --- formatting ----------------------------------------------------------------------------------

def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes/s":
        return f"{value / 1e9:.2f} GB/s" if value >= 1e8 else f"{value / 1e6:.1f} MB/s"
    if unit == "seconds":
        return f"{value:.2f} s" if value >= 1 else f"{value * 1e3:.1f} ms" if value >= 0.01 else f"{value * 1e3:.2f} ms"
    per = unit.split("/")[0]
    return f"{value:,.0f} {per}/s" if value >= 100 else f"{value:.1f} {per}/s"


def fmt_requests(counts: dict[str, int]) -> str:
    if not counts:
        return "0"
    parts = sorted(counts.items(), key=lambda item: -item[1])
    return ", ".join(f"{n:,} {OPERATIONS.get(op, op)}" for op, n in parts)


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.2f}" if ratio < 10 else f"{ratio:.0f}"


def failure_note(samples: list[dict[str, Any]]) -> str:
    errors = Counter(s.get("error") or "failed" for s in samples if not s["ok"])
    what = errors.most_common(1)[0][0] if errors else "failed"
    return "timeout" if "timed out" in what else "failed"


def peer_names(result: dict[str, Any]) -> list[str]:
    return [p["name"] for p in result["peers"]]


def labels(result: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["label"] for p in result["peers"]}


def workload_label(result: dict[str, Any], workload: Workload) -> str:
    scale = result["scale"]
    size = scale["large"]
    size_text = f"{size // 2**20} MiB" if size < 2**30 else f"{size / 2**30:g} GiB"
    detail = {
        "seq_read_1": f"{size_text}", "seq_read_4": f"{size_text}",
        "rand_read": f"{scale['random_reads']} reads", "seq_write": f"{size_text}",
        "ls_l": f"{scale['entries']:,} files", "find": f"{scale['tree']:,} files",
        "epoch1": f"{scale['train']:,} x 256 KiB", "epoch2": f"{scale['train']:,} x 256 KiB",
        "stat_storm": f"{scale['stats']:,} files", "ttfb": f"median of {scale['ttfb']}",
    }.get(workload.name, "")
    return f"{workload.label} ({detail})" if detail else workload.label


# --- the tables ----------------------------------------------------------------------------------

def cell(result: dict[str, Any], groups: dict[Key, list], peer: str, workload: Workload, latency: float) -> str:
    samples = groups.get((peer, workload.name, latency))
    if not samples:
        return "not run"
    value = median_of(samples)
    if value is None:
        return f"**FAILED** ({failure_note(samples)})"
    text = fmt(value, workload.unit)
    failed = sum(1 for s in samples if not s["ok"])
    if failed:
        text += f" ({failed} of {len(samples)} runs failed)"
    if peer == REFERENCE:
        return text
    reference = median_of(groups.get((REFERENCE, workload.name, latency), []))
    if reference is None:
        return text
    if peer in LIMITS:  # s3xfs's fraction of the limit
        return f"{text} ({fmt_ratio(workload.performance(reference) / workload.performance(value))})"
    ratio = workload.performance(value) / workload.performance(reference)
    shown = fmt_ratio(ratio)
    return f"{text} (**{shown}**)" if ratio > BEHIND_MARGIN else f"{text} ({shown})"


def results_table(result: dict[str, Any], latency: float) -> list[str]:
    groups = group(result)
    names = peer_names(result)
    label = labels(result)
    lines = ["| workload | " + " | ".join(label[p] for p in names) + " |", "|---" * (len(names) + 1) + "|"]
    for workload in selected_workloads(result):
        cells = [cell(result, groups, peer, workload, latency) for peer in names]
        lines.append(f"| {workload_label(result, workload)} | " + " | ".join(cells) + " |")
    return lines


def requests_table(result: dict[str, Any], latency: float) -> list[str]:
    groups = group(result)
    names = [p for p in peer_names(result) if p != "local"]
    label = labels(result)
    lines = ["| workload | " + " | ".join(label[p] for p in names) + " |", "|---" * (len(names) + 1) + "|"]
    for workload in selected_workloads(result):
        cells = []
        for peer in names:
            samples = groups.get((peer, workload.name, latency))
            cells.append("-" if not samples or median_of(samples) is None else fmt_requests(median_requests(samples)))
        lines.append(f"| {workload.label} | " + " | ".join(cells) + " |")
    return lines


def selected_workloads(result: dict[str, Any]) -> list[Workload]:
    return [BY_NAME[w["name"]] for w in result["workloads"] if w["name"] in BY_NAME]


# --- why s3xfs is behind -------------------------------------------------------------------------

def total(counts: dict[str, int]) -> int:
    return sum(counts.values())


def behind(result: dict[str, Any]) -> list[str]:
    """One bullet per (workload, latency) where a peer (not s3xfs itself on the other bucket, not a
    limit) is ahead of s3xfs: by how much, and the measured differences against the fastest of them
    that explain it (requests, bytes fetched, CPU of the daemon)."""
    groups = group(result)
    label = labels(result)
    kinds = {p["name"]: p.get("kind") for p in result["peers"]}
    bullets = []
    for latency in result["latencies_ms"]:
        for workload in selected_workloads(result):
            ours = groups.get((REFERENCE, workload.name, float(latency)), [])
            reference = median_of(ours)
            if reference is None:
                continue
            ahead = []
            for peer in peer_names(result):
                if kinds.get(peer) == "s3xfs" or peer in LIMITS:
                    continue
                value = median_of(groups.get((peer, workload.name, float(latency)), []))
                if value is not None:
                    ratio = workload.performance(value) / workload.performance(reference)
                    if ratio > BEHIND_MARGIN:
                        ahead.append((ratio, peer, value))
            if not ahead:
                continue
            ahead.sort(reverse=True)
            ratio, best, value = ahead[0]
            others = "".join(f", {label[p]} {r:.2f}x" for r, p, _ in ahead[1:])
            bullets.append(f"- **{workload.label}, {latency:g} ms**: {label[best]} {ratio:.2f}x s3xfs "
                           f"({fmt(value, workload.unit)} vs {fmt(reference, workload.unit)}){others}. "
                           + " ".join(reasons(ours, groups[(best, workload.name, float(latency))], label[best],
                                              read_bytes(result, workload))))
    return bullets


def read_bytes(result: dict[str, Any], workload: Workload) -> int | None:
    """How many bytes the workload itself reads (what a perfect client would fetch)."""
    scale = result["scale"]
    return {"seq_read_1": scale["large"], "seq_read_4": scale["large"], "rand_read": scale["random_reads"] * 256 * 1024,
            "epoch1": scale["train"] * 256 * 1024}.get(workload.name)


def reasons(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], name: str, wanted: int | None) -> list[str]:
    """What the endpoint and /proc measured for s3xfs and for the peer on the same workload."""
    found = []
    our_requests, their_requests = median_requests(ours), median_requests(theirs)
    n_ours, n_theirs = total(our_requests), total(their_requests)
    if n_theirs == 0 and n_ours > 0:
        found.append(f"{name} sent no request at all (it answered from its own cache); s3xfs sent "
                     f"{fmt_requests(our_requests)}.")
    elif n_ours > 1.2 * n_theirs:
        found.append(f"s3xfs sent {n_ours / max(n_theirs, 1):.1f}x the requests ({fmt_requests(our_requests)}; "
                     f"{name}: {fmt_requests(their_requests)}).")
    else:
        found.append(f"Requests: s3xfs {fmt_requests(our_requests)}; {name} {fmt_requests(their_requests)}.")
    our_bytes, their_bytes = median_field(ours, "bytes_out"), median_field(theirs, "bytes_out")
    if our_bytes is not None and their_bytes is not None and our_bytes > 1.2 * their_bytes + 2**20:
        read = f" for the {wanted / 2**20:.0f} MiB read" if wanted else ""
        found.append(f"s3xfs fetched {our_bytes / 2**20:.0f} MiB from the endpoint{read}, {name} "
                     f"{their_bytes / 2**20:.0f} MiB.")
    our_cpu, their_cpu = median_field(ours, "cpu", "daemon"), median_field(theirs, "cpu", "daemon")
    if our_cpu is not None and their_cpu is not None and our_cpu > 1.3 * their_cpu + 0.01:
        found.append(f"The s3xfs daemon spent {our_cpu:.2f} CPU-seconds on it, {name} {their_cpu:.2f}.")
    return found


def failures(result: dict[str, Any]) -> list[str]:
    label = labels(result)
    lines = []
    for sample in result["samples"]:
        if not sample["ok"]:
            lines.append(f"- {label.get(sample['peer'], sample['peer'])}, {sample['workload']}, "
                         f"{sample['latency_ms']:g} ms, run {sample['repeat'] + 1}: {sample.get('error') or 'failed'}")
    return lines


# --- the whole block -----------------------------------------------------------------------------

def markdown(result: dict[str, Any], chart_name: str = CHART.name) -> str:
    repeats = result["repeats"]
    lines = [
        f"Command: `{result['command']}` ({result['started']}, {result['seconds'] / 60:.0f} min).",
        "",
        f"Machine: {result['machine']['description']}." + load_note(result),
        "",
        f"Scale: {result['scale_text']}" + (" (**reduced scale**: the issue's full scale is `--scale 1`)."
                                             if result["scale_factor"] < 1 else "."),
        "",
        f"Figures are medians of {repeats} run{'s' if repeats > 1 else ''}; every cold workload ran on a fresh "
        "mount with empty cache directories, after "
        + ("dropping the kernel's caches." if result.get("caches_dropped") else
           "**not** dropping the kernel's caches (not root).")
        + ("" if result.get("endpoint_on_tmpfs", True) else
           " The endpoint's storage was on disk, not tmpfs: cold runs also read the \"remote\" objects from disk."),
    ]
    for latency in result["latencies_ms"]:
        lines += ["", f"**{latency:g} ms** of first-byte latency injected by the endpoint:", ""]
        lines += results_table(result, float(latency))
    lines += ["", "In a peer's column, the figure in parentheses is that peer's performance over s3xfs's "
                  "(above 1, in bold: the peer is ahead; for times, s3xfs's time over the peer's). In the direct and "
                  "local columns it is s3xfs's fraction of that limit.", "",
              f"![s3xfs against its peers, relative to s3xfs on the directory bucket]({chart_name})"]
    bullets = behind(result)
    lines += ["", "Where s3xfs is behind a peer (measured in this run):", ""]
    lines += bullets or ["- nowhere: s3xfs is ahead of every peer on every workload."]
    lines += ["", f"Requests the endpoint counted per run (median), at {result['latencies_ms'][0]:g} ms:", ""]
    lines += requests_table(result, float(result["latencies_ms"][0]))
    failed = failures(result)
    if failed:
        lines += ["", "Failed runs:", ""] + failed
    return "\n".join(lines) + "\n"


def load_note(result: dict[str, Any]) -> str:
    """The 1-minute load average at the start and end: above the core count, other work shared the machine."""
    loads = result.get("load_average")
    if not loads:
        return ""
    cores = result["machine"].get("cores", 1)
    busy = " (busier than its cores: other work shared the machine, expect noise)" if max(loads) > cores else ""
    return f" Load average at the start and end: {' / '.join(f'{v:.1f}' for v in loads)}{busy}."


def write_doc(result: dict[str, Any], doc: Path = DOC, chart_name: str = CHART.name) -> None:
    """Replace what is between the markers (adding the section with its markers if missing)."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{markdown(result, chart_name)}{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    doc.write_text(text)


# --- the chart -----------------------------------------------------------------------------------

SHORT = {"seq_read_1": "seq read\n1 job", "seq_read_4": "seq read\n4 jobs", "rand_read": "random\n256 KiB reads",
         "seq_write": "seq write", "ls_l": "ls -l", "find": "find", "epoch1": "training\nepoch 1",
         "epoch2": "training\nepoch 2", "stat_storm": "stat storm", "ttfb": "time to\nfirst byte"}


def chart(result: dict[str, Any], path: Path = CHART) -> None:
    """Each peer's performance relative to s3xfs, per workload, one panel per latency (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    groups = group(result)
    names = peer_names(result)
    label = labels(result)
    workloads = selected_workloads(result)
    latencies = result["latencies_ms"]
    fig, axes = plt.subplots(len(latencies), 1, figsize=(13, 1.4 + 3.6 * len(latencies)), squeeze=False)
    width = 0.84 / len(names)
    colors = plt.get_cmap("tab10")
    for row, latency in enumerate(latencies):
        ax = axes[row][0]
        for index, peer in enumerate(names):
            xs, ys, failed_xs = [], [], []
            for x, workload in enumerate(workloads):
                reference = median_of(groups.get((REFERENCE, workload.name, float(latency)), []))
                samples = groups.get((peer, workload.name, float(latency)), [])
                value = median_of(samples)
                position = x - 0.42 + width * (index + 0.5)
                if samples and value is None:
                    failed_xs.append(position)
                elif value is not None and reference is not None:
                    xs.append(position)
                    ys.append(workload.performance(value) / workload.performance(reference))
            ax.bar(xs, ys, width, label=label[peer] if row == 0 else None, color=colors(index % 10),
                   hatch="//" if peer in LIMITS else None, edgecolor="black", linewidth=0.3)
            for position in failed_xs:
                ax.annotate("x", (position, 1), ha="center", va="center", color="red", fontsize=12, fontweight="bold")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_locator(LogLocator(base=2))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v >= 1 else f"1/{round(1 / v)}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(range(len(workloads)))
        ax.set_xticklabels([SHORT.get(w.name, w.label) for w in workloads], fontsize=8)
        ax.set_xlim(-0.5, len(workloads) - 0.5)
        ax.set_ylabel("performance / s3xfs")
        ax.set_title(f"{latency:g} ms first-byte latency", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    reduced = f", reduced scale {result['scale_factor']:g}" if result["scale_factor"] < 1 else ""
    fig.suptitle(f"s3xfs against its peers (medians of {result['repeats']} run{'s' if result['repeats'] > 1 else ''}"
                 f"{reduced}): above 1 = faster than s3xfs on the directory bucket; hatched = limits; red x = failed",
                 fontsize=10)
    fig.legend(loc="upper center", ncol=min(len(names), 4), fontsize=8, bbox_to_anchor=(0.5, 0.97), frameon=False)
    top = 1 - 0.62 / (1.4 + 3.6 * len(latencies))  # room for the title and the legend
    fig.tight_layout(rect=(0, 0, 1, top))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
