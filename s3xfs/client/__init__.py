"""The client layer: the only code that talks to S3 (see docs/ARCHITECTURE.md)."""
