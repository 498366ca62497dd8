"""HTTP/1.1 request parsing of the local endpoint (s3xfs.localzone.http)."""

from __future__ import annotations

import io

import pytest

from s3xfs.localzone.http import BadRequest, read_request


def parse(raw: bytes):
    return read_request(io.BytesIO(raw), "127.0.0.1")


def test_repeated_identical_content_length_is_one_value():
    # rclone's presigned PUTs (Go net/http) send the signed Content-Length header next to its own
    request = parse(b"PUT /b/k HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\ncontent-length: 6\r\n\r\nabcdef")
    assert request is not None and request.headers["content-length"] == "6"
    request = parse(b"PUT /b/k HTTP/1.1\r\nHost: h\r\nContent-Length: 6, 6\r\n\r\nabcdef")
    assert request is not None and request.headers["content-length"] == "6"


def test_conflicting_content_lengths_are_rejected():
    with pytest.raises(BadRequest):
        parse(b"PUT /b/k HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nContent-Length: 7\r\n\r\nabcdefg")
