"""Docs that list options must match the real argument parsers, both ways."""

from __future__ import annotations

import re
from pathlib import Path

from s3xfs.cli import build_parser as mount_parser
from s3xfs.localzone.cli import build_parser as localzone_parser

DOCS = Path(__file__).resolve().parent.parent / "docs"


def long_options(parser) -> set[str]:
    options = set()
    for action in parser._actions:  # argparse has no public accessor for its actions
        if hasattr(action, "_name_parser_map"):
            continue
        options.update(o for o in action.option_strings if o.startswith("--"))
    return options - {"--help", "--version"}


def documented(path: Path) -> set[str]:
    rows = [line for line in path.read_text().splitlines() if line.startswith("| `-")]
    return {option for row in rows for option in re.findall(r"`(--[a-z-]+)", row.split("|")[1])}


def test_configuration_md_matches_s3xfs_mount():
    mount = mount_parser()._subparsers._group_actions[0].choices["mount"]
    assert documented(DOCS / "CONFIGURATION.md") == long_options(mount)


def test_localzone_md_matches_s3xfs_localzone():
    assert documented(DOCS / "LOCALZONE.md") == long_options(localzone_parser())


def test_the_comparison_sees_the_options():
    """Guard against both sides being empty (a table format change would make the tests vacuous)."""
    assert len(documented(DOCS / "CONFIGURATION.md")) >= 15
    assert len(documented(DOCS / "LOCALZONE.md")) >= 15
