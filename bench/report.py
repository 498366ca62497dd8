"""What every benchmark suite prints and keeps: Markdown tables, and its result as JSON in bench/results/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"  # gitignored: figures worth keeping go to docs/BENCHMARKS.md


def print_table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def print_ratio_table(table: list[tuple[str, str, str, str, str, bool | None]]) -> None:
    """Rows of (workload, s3xfs, baseline, ratio, target, met), met None where there is no target."""
    print_table(("workload", "s3xfs", "baseline (same run)", "ratio", "target", "met?"),
                [(*row[:5], "-" if row[5] is None else "yes" if row[5] else "NO") for row in table])


def save_result(name: str, result: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
