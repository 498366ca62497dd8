"""``./dev soak``: the reliability scenarios for longer, on one mount, with a table of figures.

Why: the suite (tests/reliability) proves each behaviour in a few minutes; a soak shows they
hold for half an hour in a row on one daemon: sessions refreshed thousands of times, faults
for tens of minutes, an outage in the middle of it all, and nothing leaking in between. Phases,
on one 2-second-session endpoint and one read-write mount:

1. session churn: the mixed workload, no faults;
2. faults: 5% SlowDown, 1% dropped connections, 1% premature ExpiredToken, latency spikes;
3. outage: the endpoint process stopped for 20 s mid-workload, then started again on the same
   port and storage (it has forgotten every session).

Then every file is verified through the mount and from the endpoint. The figures go to
bench/results/reliability.json; ``--update-docs`` writes them (and those of the last suite run,
bench/results/reliability-suite.json) into docs/RELIABILITY.md between the figures markers.
Exit status 0 when every check held, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.reliability.workload import SOAK_RESULTS, SUITE_RESULTS, Report, Workload, WorkloadConfig, mount_stats, \
    operation_bound, record_figures, time_to_first_write

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "RELIABILITY.md"
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"
DEFAULT_MINUTES = 30.0  # long enough for ~2,000 session refreshes and tens of thousands of operations
MIN_MINUTES = 2.0  # below this the outage phase (10 s + 20 s + 20 s) leaves nothing for the others
MAX_MINUTES = 240.0  # bounded: a soak is a run, not a service (and keeps a record of every operation)
SESSION_TTL = 2  # seconds, as in the churn test
OUTAGE_SECONDS = 20.0  # as the issue asks
OUTAGE_BEFORE, OUTAGE_AFTER = 10.0, 20.0  # workload around the outage
FAULTS = {"slowdown_rate": 0.05, "drop_rate": 0.01, "expire_token_rate": 0.01, "latency_ms": 2.0,
          "latency_jitter_ms": 120.0}
CLEAR = {"slowdown_rate": 0.0, "drop_rate": 0.0, "expire_token_rate": 0.0, "latency_ms": 0.0, "latency_jitter_ms": 0.0,
         "outage": False}
PHASE_TITLES = {
    "soak_churn": f"session churn ({SESSION_TTL} s sessions)",
    "soak_faults": "faults (5% SlowDown, 1% drops, 1% ExpiredToken, 2 ms + 0-120 ms latency)",
    "soak_outage": f"outage (endpoint stopped {OUTAGE_SECONDS:.0f} s, restarted)",
    "session_churn": "session churn, read-write (2 s sessions)",
    "session_churn_read_only": "session churn, read-only (2 s sessions)",
    "faults_moderate": "moderate faults (5% SlowDown, 1% drops, 1% ExpiredToken, latency)",
    "faults_beyond_budget": "beyond the retry budget (70% SlowDown, 25% drops), then cleared",
    "outage": "outage (endpoint stopped, restarted)",
    "outage_flag": "outage flag (every connection reset)",
}


class SoakError(Exception):
    """Bad arguments or an environment the soak cannot run in: one line, exit status 2."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="./dev soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                        help=f"total length of the phases, {MIN_MINUTES:g} to {MAX_MINUTES:g} (default: {DEFAULT_MINUTES:g})")
    parser.add_argument("--seed", type=int, default=1, help="workload and fault seed (default: 1)")
    parser.add_argument("--workers", type=int, default=4, help="workload threads, 1 to 64 (default: 4)")
    parser.add_argument("--update-docs", action="store_true",
                        help="write the figures into docs/RELIABILITY.md (between its figures markers)")
    parser.add_argument("--docs-only", action="store_true",
                        help="do not run: only write the figures of the last runs into docs/RELIABILITY.md")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, endpoint storage)")
    args = parser.parse_args(argv)
    if not MIN_MINUTES <= args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes must be between {MIN_MINUTES:g} and {MAX_MINUTES:g}, not {args.minutes:g}")
    if not 1 <= args.workers <= 64:
        parser.error(f"--workers must be between 1 and 64, not {args.workers}")
    return args


# --- running ----------------------------------------------------------------------------------------

def _isolate_environment() -> None:
    """As the test suite does: no developer AWS configuration or instance metadata leaks in."""
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ["AWS_CONFIG_FILE"] = "/nonexistent/s3xfs-soak/config"
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/s3xfs-soak/credentials"
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)


def _phase_figures(report: Report, before: dict[str, Any], start: float, end: float, endpoint: dict[str, Any],
                   daemon_before: dict[str, Any], daemon_after: dict[str, Any]) -> dict[str, Any]:
    """Figures of one phase: the operations that started in it, and the counters' change."""
    records = [r for r in report.records if start <= r.start < end]
    operations: dict[str, int] = {}
    for r in records:
        operations[r.kind] = operations.get(r.kind, 0) + 1
    failed = report.failures_between(start, end)
    latencies = sorted(r.end - r.start for r in records)
    sessions = endpoint["sessions"]
    return {
        "duration_s": round(end - start, 1),
        "operations": dict(sorted(operations.items())),
        "operations_total": len(records),
        "failed_total": sum(failed.values()),
        "failed_by_errno": dict(failed),
        "wrong_bytes": report.wrong_bytes - before["wrong_bytes"],
        "problems": report.problems - before["problems"],
        "create_session": sessions["ReadOnly"] + sessions["ReadWrite"],
        "retries": daemon_after["s3"]["retries"] - daemon_before["s3"]["retries"],
        "lost_answers_recognised": daemon_after["s3"].get("lost_answers", 0) - daemon_before["s3"].get("lost_answers", 0),
        "faults_injected": endpoint["faults"],
        "latency_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1) if latencies else 0.0,
        "latency_max_ms": round(latencies[-1] * 1000, 1) if latencies else 0.0,
    }


def run_soak(minutes: float, seed: int, workers: int, keep: bool) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Run the phases; returns the figures by phase and the checks that failed (empty: all held)."""
    from tests.support.localzone import DIRECTORY_BUCKET as BUCKET, LocalZone
    from tests.support.mount import FUSE_MISSING, Mount

    if FUSE_MISSING:
        raise SoakError(f"the soak needs FUSE: {FUSE_MISSING}")
    _isolate_environment()
    total = minutes * 60
    outage_phase = OUTAGE_BEFORE + OUTAGE_SECONDS + OUTAGE_AFTER
    churn_seconds = (total - outage_phase) * 0.55
    fault_seconds = total - outage_phase - churn_seconds
    workdir = Path(tempfile.mkdtemp(prefix="s3xfs-soak-"))
    root = workdir / "root"
    args = ("--bucket", BUCKET, "--session-ttl", str(SESSION_TTL), "--fault-seed", str(seed), "--access-log", "off")
    servers: list[LocalZone] = []
    figures: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    bound = operation_bound()
    print(f"soak: {minutes:g} min: churn {churn_seconds:.0f} s, faults {fault_seconds:.0f} s, outage phase "
          f"{outage_phase:.0f} s; working directory {workdir}", flush=True)
    try:
        server = LocalZone(workdir, *args, root=root).start()
        servers.append(server)
        port = server.port
        mount = Mount(server, BUCKET, workdir / "mnt", "--part-size", "5M", "--staging-dir", str(workdir / "staging"))
        current = [server]
        workload = Workload(mount.path, WorkloadConfig(seed=seed, workers=workers, op_timeout=bound),
                            endpoint=lambda: current[0].client(), bucket=BUCKET)
        with mount:
            workload.prepare()

            def phase(name: str, seconds: float, faults: dict[str, Any] | None = None) -> None:
                current[0].reset_stats()
                if faults:
                    current[0].set_faults(**faults)
                daemon_before = mount_stats(mount.path)
                before = {"wrong_bytes": workload.report.wrong_bytes, "problems": workload.report.problems}
                start = time.monotonic()
                print(f"soak: {name} for {seconds:.0f} s", flush=True)
                workload.run(seconds)
                end = time.monotonic()
                endpoint = current[0].stats()
                if faults:
                    current[0].set_faults(**CLEAR)
                figures[name] = _phase_figures(workload.report, before, start, end, endpoint, daemon_before,
                                               mount_stats(mount.path))

            phase("soak_churn", churn_seconds)
            phase("soak_faults", fault_seconds, FAULTS)
            figures["soak_outage"] = _outage_phase(workload, mount, current, servers, workdir, root, port, args)
            endpoint_before_verify = {name: f.get("create_session") for name, f in figures.items()}
            daemon = mount_stats(mount.path)
            started = time.monotonic()
            report = workload.verify()
            figures["soak_total"] = {
                **report.summary(), "verify_s": round(time.monotonic() - started, 1),
                "create_session": sum(v or 0 for v in endpoint_before_verify.values()),
                "retries": daemon["s3"]["retries"], "lost_answers_recognised": daemon["s3"].get("lost_answers", 0),
                "session_invalidations": daemon["sessions"]["invalidations"],
                "daemon_alive": mount.proc is not None and mount.proc.poll() is None,
            }
            failures = _checks(figures, report)
    finally:
        if "workload" in locals():
            workload.stop()  # interrupted: no worker goes on into an unmounted directory
        for server in servers:
            server.stop()
        if keep or failures:
            print(f"soak: working directory kept: {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return figures, failures


def _outage_phase(workload: Workload, mount: Any, current: list[Any], servers: list[Any], workdir: Path, root: Path,
                  port: int, args: tuple[str, ...]) -> dict[str, Any]:
    """The workload runs while the endpoint is stopped, then restarted on the same port and root."""
    import threading

    from tests.support.localzone import LocalZone

    server = current[0]
    server.reset_stats()
    daemon_before = mount_stats(mount.path)
    before = {"wrong_bytes": workload.report.wrong_bytes, "problems": workload.report.problems}
    seconds = OUTAGE_BEFORE + OUTAGE_SECONDS + OUTAGE_AFTER
    print(f"soak: outage phase for {seconds:.0f} s (endpoint down {OUTAGE_SECONDS:.0f} s)", flush=True)
    start = time.monotonic()
    runner = threading.Thread(target=workload.run, args=(seconds,), name="workload-runner", daemon=True)
    runner.start()
    sessions_before_stop = 0
    try:
        time.sleep(OUTAGE_BEFORE)
        sessions_before_stop = sum(server.stats()["sessions"].values())
        server.stop()
        stopped = time.monotonic()
        time.sleep(OUTAGE_SECONDS)
        restarted = None
        for attempt in range(10):  # the port may be briefly held by a client socket
            candidate = LocalZone(workdir, *args, "--port", str(port), root=root)
            try:
                restarted = candidate.start()
                break
            except RuntimeError:
                candidate.stop()
                time.sleep(0.5)
        if restarted is None:
            raise SoakError(f"could not start the endpoint again on port {port}")
        servers.append(restarted)
        current[0] = restarted
        back = time.monotonic()
        try:
            recovery: float | None = time_to_first_write(mount.path / "probe", operation_bound())
        except TimeoutError:
            recovery = None  # a failed check (see _checks)
    finally:
        if current[0] is server:
            workload.stop()
        runner.join(timeout=seconds + workload.config.op_timeout + 60)
    end = time.monotonic()
    endpoint = current[0].stats()
    result = _phase_figures(workload.report, before, start, end, endpoint, daemon_before, mount_stats(mount.path))
    result.update({
        "create_session": result["create_session"] + sessions_before_stop,
        "outage_s": round(back - stopped, 1),
        "failed_during_outage": dict(workload.report.failures_between(stopped, back)),
        "failed_after_outage": dict(workload.report.failures_between(back, end)),
        "max_op_latency_during_outage_s": round(workload.report.max_latency(window=(stopped, back)), 2),
        "recovery_s": None if recovery is None else round(recovery, 2),
    })
    return result


def _checks(figures: dict[str, dict[str, Any]], report: Report) -> list[str]:
    """What must hold; each failure is one line."""
    failures = []
    if report.problems:
        failures.append(f"problems (wrong bytes, lost files, hangs...): {report.describe()}")
    for name in ("soak_churn", "soak_faults"):
        if figures[name]["failed_total"]:
            failures.append(f"{name}: {figures[name]['failed_total']} failed operations {figures[name]['failed_by_errno']}")
    outage = figures["soak_outage"]
    if set(outage["failed_by_errno"]) - {"EIO"}:
        failures.append(f"outage: failures other than EIO: {outage['failed_by_errno']}")
    if outage["recovery_s"] is None:
        failures.append("outage: no write succeeded through the mount after the endpoint was back")
    if outage["failed_after_outage"]:
        failures.append(f"outage: operations failed after the endpoint was back: {outage['failed_after_outage']}")
    if not figures["soak_total"]["daemon_alive"]:
        failures.append("the daemon died")
    return failures


# --- the table, and the docs -------------------------------------------------------------------------

def _ops(figures: dict[str, Any]) -> str:
    return f"{figures.get('operations_total', 0):,}"


def _failed(figures: dict[str, Any]) -> str:
    by_errno = figures.get("failed_by_errno") or {}
    return ", ".join(f"{n:,} {e}" for e, n in sorted(by_errno.items())) or "0"


def _notes(name: str, f: dict[str, Any]) -> str:
    notes = []
    if "max_op_latency_during_outage_s" in f:
        notes.append(f"slowest operation during the outage {f['max_op_latency_during_outage_s']} s")
    if "recovery_s" in f:
        notes.append(f"first write {f['recovery_s']} s after the endpoint was back")
    if "max_op_latency_harsh_s" in f:
        notes.append(f"slowest operation while harsh {f['max_op_latency_harsh_s']} s (bound {f.get('op_bound_s')} s); "
                     f"failed after clearing: {sum((f.get('failed_after_clearing') or {}).values())}")
    injected = f.get("faults_injected") or {}
    if injected:
        notes.append("injected " + ", ".join(f"{n:,} {k}" for k, n in sorted(injected.items())))
    if f.get("lost_answers_recognised"):
        notes.append(f"{f['lost_answers_recognised']} lost answers recognised")
    if "sessions_by_mode" in f:
        modes = f["sessions_by_mode"]
        notes.append(f"sessions: {modes.get('ReadOnly', 0)} ReadOnly, {modes.get('ReadWrite', 0)} ReadWrite")
    if f.get("verified_files"):
        notes.append(f"{f['verified_files']:,} files verified ({f.get('verified_bytes', 0) / 2**20:,.0f} MiB)")
    return "; ".join(notes)


def table(scenarios: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows, one per scenario, in a fixed order."""
    lines = ["| scenario | duration | operations | failed | wrong bytes | CreateSession | retries | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for name, f in scenarios.items():
        if name == "soak_total":
            continue
        title = PHASE_TITLES.get(name, name)
        lines.append(f"| {title} | {f.get('duration_s', 0):,.0f} s | {_ops(f)} | {_failed(f)} | {f.get('wrong_bytes', 0)} "
                     f"| {f.get('create_session', '-')} | {f.get('retries', '-')} | {_notes(name, f)} |")
    total = scenarios.get("soak_total")
    if total:
        lines.append(f"| **whole soak** | {total.get('duration_s', 0):,.0f} s | {_ops(total)} | {_failed(total)} | "
                     f"{total.get('wrong_bytes', 0)} | {total.get('create_session', '-')} | {total.get('retries', '-')} | "
                     f"{_notes('soak_total', total)}; verified in {total.get('verify_s', '-')} s |")
    return lines


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("scenarios"), dict) else None


def figures_section() -> str:
    """The text between the figures markers, from the last soak and the last suite run."""
    parts = []
    soak = _load(SOAK_RESULTS)
    if soak:
        parts.append(f"Last soak: `{soak.get('command', './dev soak')}`, finished {soak.get('finished', '?')} "
                     f"({soak.get('machine', '?')}, commit {soak.get('commit', '?')}), "
                     f"{'every check held' if not soak.get('failures') else 'FAILED: ' + '; '.join(soak['failures'])}.")
        parts.append("")
        parts.extend(table(soak["scenarios"]))
    else:
        parts.append("No soak has run yet: `./dev soak --update-docs`.")
    suite = _load(SUITE_RESULTS)
    if suite:
        parts.append("")
        parts.append("Last run of the suite's scenarios (`.venv/bin/python -m pytest tests/reliability`), each "
                     "scenario as of its own last run:")
        parts.append("")
        order = [name for name in PHASE_TITLES if name in suite["scenarios"]]
        order += sorted(name for name in suite["scenarios"] if name not in order)
        parts.extend(table({name: suite["scenarios"][name] for name in order}))
    return "\n".join(parts)


def update_docs(path: Path = DOCS) -> None:
    text = path.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SoakError(f"{path} must hold one {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{figures_section()}\n{END}{tail}")
    print(f"soak: figures written into {path.relative_to(REPO)}")


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "?"
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if not args.docs_only:
            began = time.monotonic()
            figures, failures = run_soak(args.minutes, args.seed, args.workers, args.keep)
            figures["soak_total"]["duration_s"] = round(time.monotonic() - began, 1)
            meta = {"command": f"./dev soak --minutes {args.minutes:g}" + (f" --seed {args.seed}" if args.seed != 1 else ""),
                    "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(),
                    "machine": f"{os.cpu_count()} CPUs, Linux {platform.release()}", "failures": failures,
                    "minutes": args.minutes, "seed": args.seed}
            SOAK_RESULTS.unlink(missing_ok=True)  # a soak's file holds one soak
            for name, values in figures.items():
                record_figures(SOAK_RESULTS, name, values, **meta)
            print()
            print("\n".join(table(figures)))
            print(f"\nsoak: figures in {SOAK_RESULTS.relative_to(REPO)}")
            for line in failures:
                print(f"soak: FAILED: {line}")
        else:
            failures = []
        if args.update_docs or args.docs_only:
            update_docs()
        return 1 if failures else 0
    except SoakError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
