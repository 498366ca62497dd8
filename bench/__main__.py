"""``./dev bench [NAME ...]``: run benchmarks (default: all)."""

from __future__ import annotations

import argparse
import sys

from bench import localzone, mount, peers, training, write

SUITES = {"localzone": localzone.main, "mount": mount.main, "write": write.main, "training": training.main,
          "peers": peers.main}


def main() -> int:
    if sys.argv[1:2] == ["peers"]:  # the peers suite has options of its own: ./dev bench peers --help
        peers.main(argv=sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(prog="./dev bench", description=__doc__)
    parser.add_argument("suites", nargs="*", choices=[*SUITES, []], default=[], help="which benchmarks (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    for name in args.suites or list(SUITES):
        SUITES[name](quick=args.quick)
    return 0


raise SystemExit(main())
