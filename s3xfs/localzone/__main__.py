"""``python -m s3xfs.localzone``."""

from s3xfs.localzone.cli import main

raise SystemExit(main())
