"""Filesystem semantics on plain dataclasses: no pyfuse3 and no boto3 imports here."""
