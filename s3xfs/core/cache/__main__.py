"""``python -m s3xfs.core.cache block-writer DIR TAG SIZE_LIMIT``: the cache's block writer process,
started by a mount with ``--cache`` (see block_writer.py); not a command for people."""

import sys

from .block_writer import COMMAND, main

if len(sys.argv) != 5 or sys.argv[1] != COMMAND:
    sys.exit(f"usage: python -m s3xfs.core.cache {COMMAND} DIR TAG SIZE_LIMIT (started by s3xfs mount --cache)")
sys.exit(main(sys.argv[2:]))
