"""s3xfs: mount an Amazon S3 Express One Zone directory bucket through FUSE."""

__version__ = "0.1.0"
