"""s3xfs-localzone: a local S3 Express One Zone zonal endpoint.

An independent program: it imports nothing from the s3xfs client or filesystem code, so that
it can catch their mistakes instead of sharing them. See docs/LOCALZONE.md.
"""
