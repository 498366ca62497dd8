"""Request body readers: framing, aws-chunked signatures (AWS's published vectors), integrity."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import zlib

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from s3xfs.localzone.body import BodyReader, ChunkSigning, make_body_reader
from s3xfs.localzone.errors import S3Error

DOC_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_DATE = "20130524T000000Z"
DOC_SCOPE = "20130524/us-east-1/s3/aws4_request"
DOC_DATA = b"a" * 66560
NEXT_REQUEST = b"GET /next HTTP/1.1\r\n\r\n"  # pipelined bytes that must stay unread

SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

# Published in "Signature Calculations for the Authorization Header: Transferring Payload in
# Multiple Chunks" and "... Including Trailing Headers" (Amazon S3 API reference).
DOC_CHUNKED = (
    "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
    [
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
    ],
)
DOC_TRAILER = (
    "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
    [
        "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
        "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
        "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
    ],
    "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435",
)


def _doc_key() -> bytes:
    """Derived independently of the code under test."""
    key = ("AWS4" + DOC_SECRET).encode()
    for part in ("20130524", "us-east-1", "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def doc_signing(seed: str) -> ChunkSigning:
    return ChunkSigning(_doc_key(), DOC_DATE, DOC_SCOPE, seed)


def doc_body(signatures: list[str], data: bytes = DOC_DATA, tail: bytes = b"\r\n") -> bytes:
    """65536 + 1024 + final chunk, as in the AWS example; ``tail`` follows the final header."""
    return (
        f"10000;chunk-signature={signatures[0]}\r\n".encode() + data[:65536] + b"\r\n"
        + f"400;chunk-signature={signatures[1]}\r\n".encode() + data[65536:] + b"\r\n"
        + f"0;chunk-signature={signatures[2]}\r\n".encode() + tail
    )


def doc_trailer_body(trailer_value: str = "sOO8/Q==", signature: str = DOC_TRAILER[2]) -> bytes:
    tail = (
        f"x-amz-checksum-crc32c:{trailer_value}\r\n"
        f"x-amz-trailer-signature:{signature}\r\n\r\n"
    ).encode()
    return doc_body(DOC_TRAILER[1], tail=tail)


def http_chunked(payload: bytes, sizes: list[int], trailers: bytes = b"") -> bytes:
    """HTTP/1.1 chunked framing with chunk extensions, cutting ``payload`` at odd places."""
    out, pos, i = [], 0, 0
    while pos < len(payload):
        size = sizes[i % len(sizes)]
        piece = payload[pos : pos + size]
        out.append(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
        pos += len(piece)
        i += 1
    out.append(b"0\r\n" + trailers + b"\r\n")
    return b"".join(out)


class Socketish(io.BufferedReader):
    """A buffered socket file that also records the largest read asked of it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), buffer_size=8192)
        self.largest = 0

    def read(self, n: int | None = -1) -> bytes:  # type: ignore[override]
        self.largest = max(self.largest, n if n is not None and n >= 0 else 1 << 62)
        return super().read(n)


def reader(
    data: bytes,
    headers: dict[str, str],
    payload_hash: str | None = None,
    signing: ChunkSigning | None = None,
    extra: bytes = NEXT_REQUEST,
) -> tuple[BodyReader, Socketish]:
    stream = Socketish(data + extra)
    return make_body_reader(stream, headers, payload_hash, signing), stream


def read_all(body: BodyReader, size: int) -> bytes:
    out = []
    while True:
        piece = body.read(size)
        assert len(piece) <= size
        if not piece:
            break
        out.append(piece)
    return b"".join(out)


def fails(body: BodyReader, code: str, size: int = 4096, status: int = 400) -> S3Error:
    with pytest.raises(S3Error) as info:
        read_all(body, size)
    assert (info.value.status, info.value.code) == (status, code), info.value
    assert not body.at_eof
    return info.value


# ---------------------------------------------------------------------------------------------
# Plain bodies


@pytest.mark.parametrize("size", [1, 1000, 65536, 1 << 20])
def test_content_length_body(size: int) -> None:
    data = bytes(range(256)) * 1000
    body, stream = reader(data, {"content-length": str(len(data))}, "UNSIGNED-PAYLOAD")
    assert body.declared_length == len(data)
    assert read_all(body, size) == data
    assert body.at_eof and body.raw_bytes_read == len(data) and body.trailers == {}
    assert stream.read() == NEXT_REQUEST


def test_read_returns_exactly_n_until_the_end() -> None:
    data = b"x" * 10000
    body, _ = reader(data, {"content-length": "10000"})
    assert len(body.read(3000)) == 3000
    assert not body.at_eof
    assert len(body.read(7000)) == 7000
    assert body.at_eof  # the last byte of a declared length completes the checks at once
    assert body.read(10) == b""


def test_read_all_at_once() -> None:
    body, stream = reader(b"abc", {"content-length": "3"})
    assert body.read() == b"abc" and body.at_eof and body.read() == b""
    assert stream.read() == NEXT_REQUEST


def test_no_content_length_is_empty() -> None:
    body, stream = reader(b"", {})
    assert body.declared_length == 0
    assert body.read(10) == b"" and body.at_eof
    assert stream.read() == NEXT_REQUEST


def test_short_body_is_incomplete() -> None:
    body, _ = reader(b"x" * 99, {"content-length": "100"}, extra=b"")
    error = fails(body, "IncompleteBody")
    assert "Content-Length" in error.message
    assert body.drain(1000) is False


def test_bad_content_length() -> None:
    with pytest.raises(S3Error) as info:
        reader(b"", {"content-length": "12x"})
    assert info.value.status == 400


def test_unsupported_transfer_encoding() -> None:
    with pytest.raises(S3Error) as info:
        reader(b"", {"transfer-encoding": "gzip, chunked"})
    assert info.value.status == 501


def test_sha256_verified() -> None:
    data = b"hello world" * 1000
    digest = hashlib.sha256(data).hexdigest()
    body, _ = reader(data, {"content-length": str(len(data))}, digest)
    assert read_all(body, 777) == data and body.at_eof


def test_sha256_mismatch() -> None:
    data = b"hello world"
    wrong = hashlib.sha256(b"hello worle").hexdigest()
    body, _ = reader(data, {"content-length": str(len(data))}, wrong)
    error = fails(body, "XAmzContentSHA256Mismatch")
    assert error.extra == {
        "ClientComputedContentSHA256": wrong,
        "S3ComputedContentSHA256": hashlib.sha256(data).hexdigest(),
    }


def test_sha256_of_empty_body() -> None:
    body, _ = reader(b"", {"content-length": "0"}, hashlib.sha256(b"").hexdigest())
    assert body.read() == b"" and body.at_eof
    body, _ = reader(b"", {"content-length": "0"}, hashlib.sha256(b"x").hexdigest())
    fails(body, "XAmzContentSHA256Mismatch")


def test_anonymous_request_header_hash_is_checked() -> None:
    wrong = hashlib.sha256(b"other").hexdigest()
    body, _ = reader(b"data", {"content-length": "4", "x-amz-content-sha256": wrong}, None)
    fails(body, "XAmzContentSHA256Mismatch")


def test_memory_is_bounded_by_read_size() -> None:
    data = b"z" * (3 << 20)
    body, stream = reader(data, {"content-length": str(len(data))}, "UNSIGNED-PAYLOAD")
    assert read_all(body, 65536) == data
    assert stream.largest <= 65536


# ---------------------------------------------------------------------------------------------
# HTTP chunked


@pytest.mark.parametrize("size", [1, 5, 4096, 1 << 20])
def test_http_chunked(size: int) -> None:
    data = bytes(range(256)) * 40
    raw = http_chunked(data, [1, 100, 3000], b"x-amz-checksum-crc32: abc=\r\nX-Other:v\r\n")
    body, stream = reader(raw, {"transfer-encoding": "chunked", "content-length": "5"})
    assert body.declared_length is None
    assert read_all(body, size) == data
    assert body.at_eof and body.raw_bytes_read == len(raw)
    assert body.trailers == {"x-amz-checksum-crc32": "abc=", "x-other": "v"}
    assert stream.read() == NEXT_REQUEST


def test_http_chunked_with_sha256() -> None:
    data = b"q" * 5000
    raw = http_chunked(data, [1234])
    body, _ = reader(raw, {"transfer-encoding": "chunked"}, hashlib.sha256(data).hexdigest())
    assert read_all(body, 999) == data and body.at_eof
    body, _ = reader(raw, {"transfer-encoding": "chunked"}, hashlib.sha256(b"").hexdigest())
    fails(body, "XAmzContentSHA256Mismatch")


@pytest.mark.parametrize(
    "raw",
    [b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcX\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n"],
    ids=["bad-size", "no-crlf-after-data", "bad-trailer"],
)
def test_http_chunked_malformed(raw: bytes) -> None:
    body, _ = reader(raw, {"transfer-encoding": "chunked"})
    fails(body, "InvalidRequest")
    assert body.drain(1 << 20) is False


def test_http_chunked_truncated() -> None:
    body, _ = reader(b"10\r\nabc", {"transfer-encoding": "chunked"}, extra=b"")
    fails(body, "IncompleteBody")


# ---------------------------------------------------------------------------------------------
# aws-chunked, signed: AWS's published vectors


def aws_headers(framing: str, raw: bytes, decoded: int = 66560, **more: str) -> dict[str, str]:
    headers = {"content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(decoded)}
    if framing == "length":
        headers["content-length"] = str(len(raw))
    else:
        headers["transfer-encoding"] = "chunked"
    headers.update(more)
    return headers


def frame(framing: str, raw: bytes) -> bytes:
    return raw if framing == "length" else http_chunked(raw, [7, 40000, 13, 100])


FRAMINGS = ["length", "http-chunked"]


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("size", [1, 7, 4096, 65536, 70000, -1])
def test_aws_documented_signed_chunks(framing: str, size: int) -> None:
    raw = doc_body(DOC_CHUNKED[1])
    assert len(raw) == 66824  # the Content-Length of the AWS example
    wire = frame(framing, raw)
    body, stream = reader(wire, aws_headers(framing, raw), SIGNED, doc_signing(DOC_CHUNKED[0]))
    assert body.declared_length == 66560
    data = body.read() if size == -1 else read_all(body, size)
    assert data == DOC_DATA
    assert body.at_eof and body.trailers == {} and body.raw_bytes_read == len(wire)
    assert stream.read() == NEXT_REQUEST


@pytest.mark.parametrize("framing", FRAMINGS)
def test_aws_documented_signed_trailer(framing: str) -> None:
    raw = doc_trailer_body()
    headers = aws_headers(framing, raw, **{"x-amz-trailer": "x-amz-checksum-crc32c"})
    body, stream = reader(frame(framing, raw), headers, SIGNED_TRAILER, doc_signing(DOC_TRAILER[0]))
    assert read_all(body, 10000) == DOC_DATA
    assert body.at_eof
    assert body.trailers == {"x-amz-checksum-crc32c": "sOO8/Q=="}
    assert stream.read() == NEXT_REQUEST


def test_documented_trailer_form_with_blank_line_before_trailers() -> None:
    # The AWS page shows the final chunk followed by a blank line, then the trailers.
    tail = (
        b"\r\nx-amz-checksum-crc32c:sOO8/Q==\r\n"
        b"x-amz-trailer-signature:" + DOC_TRAILER[2].encode() + b"\r\n"
    )
    raw = doc_body(DOC_TRAILER[1], tail=tail)
    headers = aws_headers("length", raw, **{"x-amz-trailer": "x-amz-checksum-crc32c"})
    body, stream = reader(raw, headers, SIGNED_TRAILER, doc_signing(DOC_TRAILER[0]))
    assert read_all(body, 65536) == DOC_DATA and body.at_eof
    assert body.trailers == {"x-amz-checksum-crc32c": "sOO8/Q=="}
    assert stream.read() == NEXT_REQUEST


def test_tampered_trailer_value() -> None:
    raw = doc_trailer_body(trailer_value="AAAAAA==")
    body, _ = reader(raw, aws_headers("length", raw), SIGNED_TRAILER, doc_signing(DOC_TRAILER[0]))
    fails(body, "SignatureDoesNotMatch", status=403)
    assert body.trailers == {}


def test_missing_trailer_signature() -> None:
    raw = doc_body(DOC_TRAILER[1], tail=b"x-amz-checksum-crc32c:sOO8/Q==\r\n\r\n")
    body, _ = reader(raw, aws_headers("length", raw), SIGNED_TRAILER, doc_signing(DOC_TRAILER[0]))
    fails(body, "SignatureDoesNotMatch", status=403)


def test_trailer_not_allowed_without_trailer_variant() -> None:
    raw = doc_body(DOC_CHUNKED[1], tail=b"x-amz-checksum-crc32c:sOO8/Q==\r\n\r\n")
    body, _ = reader(raw, aws_headers("length", raw), SIGNED, doc_signing(DOC_CHUNKED[0]))
    fails(body, "InvalidRequest")


@pytest.mark.parametrize("framing", FRAMINGS)
def test_tampered_chunk_data(framing: str) -> None:
    data = bytearray(DOC_DATA)
    data[66000] = ord("b")
    raw = doc_body(DOC_CHUNKED[1], bytes(data))
    body, _ = reader(frame(framing, raw), aws_headers(framing, raw), SIGNED, doc_signing(DOC_CHUNKED[0]))
    assert len(body.read(65536)) == 65536  # the first chunk is intact
    error = fails(body, "SignatureDoesNotMatch", status=403)
    assert error.message.startswith("The request signature we calculated does not match")
    assert body.drain(1 << 20) is True  # the framing is intact: the connection can be reused


@pytest.mark.parametrize(
    "signatures",
    [
        [DOC_CHUNKED[1][1], DOC_CHUNKED[1][0], DOC_CHUNKED[1][2]],  # swapped
        [DOC_CHUNKED[1][0], DOC_CHUNKED[1][1], "0" * 64],  # bad final chunk
        [DOC_CHUNKED[1][0], DOC_CHUNKED[1][1], "zz"],
    ],
    ids=["swapped", "bad-final", "garbage"],
)
def test_bad_chunk_signatures(signatures: list[str]) -> None:
    raw = doc_body(signatures)
    body, _ = reader(raw, aws_headers("length", raw), SIGNED, doc_signing(DOC_CHUNKED[0]))
    fails(body, "SignatureDoesNotMatch", status=403)


def test_wrong_seed_fails_first_chunk() -> None:
    raw = doc_body(DOC_CHUNKED[1])
    body, _ = reader(raw, aws_headers("length", raw), SIGNED, doc_signing("1" * 64))
    with pytest.raises(S3Error) as info:
        body.read(65536)
    assert info.value.code == "SignatureDoesNotMatch"
    with pytest.raises(S3Error):  # the failure sticks
        body.read(1)


def test_missing_chunk_signature() -> None:
    raw = b"10000\r\n" + DOC_DATA[:65536] + b"\r\n0\r\n\r\n"
    body, _ = reader(raw, aws_headers("length", raw, 65536), SIGNED, doc_signing(DOC_CHUNKED[0]))
    fails(body, "SignatureDoesNotMatch", status=403)


def test_signed_chunks_without_signing_material_are_decoded() -> None:
    raw = doc_body(DOC_CHUNKED[1])
    body, _ = reader(raw, aws_headers("length", raw), SIGNED, None)
    assert body.read() == DOC_DATA and body.at_eof


@pytest.mark.parametrize("decoded", [66559, 66561, 10])
def test_decoded_length_mismatch(decoded: int) -> None:
    raw = doc_body(DOC_CHUNKED[1])
    body, _ = reader(raw, aws_headers("length", raw, decoded), SIGNED, doc_signing(DOC_CHUNKED[0]))
    fails(body, "IncompleteBody", size=1000)


@pytest.mark.parametrize("cut", [10, 65536 + 50, 66000, 66824 - 40, 66824 - 1])
@pytest.mark.parametrize("framing", FRAMINGS)
def test_truncated_aws_chunked(cut: int, framing: str) -> None:
    raw = doc_body(DOC_CHUNKED[1])
    wire = frame(framing, raw[:cut])
    if framing == "length":
        headers = aws_headers(framing, raw)  # declares the full length; the socket then ends
        body, _ = reader(wire, headers, SIGNED, doc_signing(DOC_CHUNKED[0]), extra=b"")
    else:  # the HTTP framing ends cleanly, but the aws-chunked stream inside is cut short
        body, _ = reader(wire, aws_headers(framing, raw), SIGNED, doc_signing(DOC_CHUNKED[0]))
    error = fails(body, "IncompleteBody", size=1000)
    assert error.status == 400


def test_data_after_final_chunk() -> None:
    raw = doc_body(DOC_CHUNKED[1]) + b"junk"
    body, _ = reader(raw, aws_headers("length", raw), SIGNED, doc_signing(DOC_CHUNKED[0]))
    fails(body, "InvalidRequest")


@pytest.mark.parametrize(
    "raw",
    [b"xyz;chunk-signature=00\r\n", b"5\r\nabcdeXY0\r\n\r\n", b"5\r\nabcde\r\n" + b"0" * 9000 + b"\r\n"],
    ids=["bad-size", "no-crlf", "line-too-long"],
)
def test_aws_chunked_malformed(raw: bytes) -> None:
    body, _ = reader(raw, aws_headers("length", raw, 5), UNSIGNED_TRAILER)
    fails(body, "InvalidRequest")
    assert body.drain(1 << 20) is True


# ---------------------------------------------------------------------------------------------
# aws-chunked, unsigned with a checksum trailer, produced by botocore (an independent encoder)


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("length", [0, 1, 5000, 200_000])
def test_botocore_unsigned_trailer_body(framing: str, length: int) -> None:
    data = bytes((i * 7) % 251 for i in range(length))
    raw = AwsChunkedWrapper(
        io.BytesIO(data), checksum_cls=Crc32Checksum, checksum_name="x-amz-checksum-crc32",
        chunk_size=65536,
    ).read()
    headers = aws_headers(framing, raw, length, **{"x-amz-trailer": "x-amz-checksum-crc32"})
    body, stream = reader(frame(framing, raw), headers, UNSIGNED_TRAILER)
    assert read_all(body, 8192) == data and body.at_eof
    expected = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert body.trailers == {"x-amz-checksum-crc32": expected}
    assert stream.read() == NEXT_REQUEST


def test_unsigned_trailer_payload_hash_from_header_when_anonymous() -> None:
    raw = AwsChunkedWrapper(io.BytesIO(b"abc"), Crc32Checksum, "x-amz-checksum-crc32").read()
    headers = aws_headers("length", raw, 3, **{"x-amz-content-sha256": UNSIGNED_TRAILER})
    body, _ = reader(raw, headers, None)
    assert body.read() == b"abc" and "x-amz-checksum-crc32" in body.trailers


# ---------------------------------------------------------------------------------------------
# Chunks signed by a test-local signer (checked against the AWS vectors first)


def sign_chunks(chunks: list[bytes], seed: str, trailer: list[tuple[str, str]] | None = None) -> bytes:
    key, empty = _doc_key(), hashlib.sha256(b"").hexdigest()
    previous, out = seed, []
    for chunk in [*chunks, b""]:
        sts = (f"AWS4-HMAC-SHA256-PAYLOAD\n{DOC_DATE}\n{DOC_SCOPE}\n{previous}\n{empty}\n"
               f"{hashlib.sha256(chunk).hexdigest()}")
        previous = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        out.append(b"%x;chunk-signature=%s\r\n%s" % (len(chunk), previous.encode(), chunk))
        if chunk:
            out.append(b"\r\n")
    if trailer is not None:
        text = "".join(f"{n}:{v}\n" for n, v in trailer)
        sts = (f"AWS4-HMAC-SHA256-TRAILER\n{DOC_DATE}\n{DOC_SCOPE}\n{previous}\n"
               f"{hashlib.sha256(text.encode()).hexdigest()}")
        signature = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        out.append("".join(f"{n}:{v}\r\n" for n, v in trailer).encode())
        out.append(f"x-amz-trailer-signature:{signature}\r\n".encode())
    out.append(b"\r\n")
    return b"".join(out)


def test_local_signer_reproduces_aws_vectors() -> None:
    chunks = [DOC_DATA[:65536], DOC_DATA[65536:]]
    assert sign_chunks(chunks, DOC_CHUNKED[0]) == doc_body(DOC_CHUNKED[1])
    assert sign_chunks(chunks, DOC_TRAILER[0], [("x-amz-checksum-crc32c", "sOO8/Q==")]) == doc_trailer_body()


@pytest.mark.parametrize("framing", FRAMINGS)
def test_many_small_signed_chunks_with_trailers(framing: str) -> None:
    chunks = [bytes([i]) * (i * 37 % 3000 + 1) for i in range(60)]
    data = b"".join(chunks)
    trailer = [("x-amz-checksum-crc32", "AAAAAA=="), ("x-amz-checksum-sha256", "abc=")]
    raw = sign_chunks(chunks, "5" * 64, trailer)
    headers = aws_headers(framing, raw, len(data))
    body, stream = reader(frame(framing, raw), headers, SIGNED_TRAILER, doc_signing("5" * 64))
    assert read_all(body, 1000) == data and body.at_eof
    assert body.trailers == dict(trailer)
    assert stream.read() == NEXT_REQUEST


def test_signed_chunk_memory_is_bounded_by_read_size() -> None:
    chunks = [b"m" * (2 << 20)] * 2
    raw = sign_chunks(chunks, "6" * 64)
    body, stream = reader(raw, aws_headers("length", raw, 4 << 20), SIGNED, doc_signing("6" * 64))
    assert read_all(body, 65536) == b"m" * (4 << 20)
    assert stream.largest <= 65536


# ---------------------------------------------------------------------------------------------
# drain()


def test_drain_small_remainder() -> None:
    body, stream = reader(b"x" * 5000, {"content-length": "5000"})
    body.read(100)
    assert body.drain(4900) is True
    assert stream.read() == NEXT_REQUEST
    assert body.read(10) == b"" and not body.at_eof  # nothing was verified


def test_drain_refuses_large_remainder_without_reading() -> None:
    body, stream = reader(b"x" * 5000, {"content-length": "5000"})
    assert body.drain(4999) is False
    assert body.raw_bytes_read == 0


def test_drain_after_eof() -> None:
    body, _ = reader(b"abc", {"content-length": "3"})
    body.read()
    assert body.drain(0) is True


def test_drain_http_chunked() -> None:
    raw = http_chunked(b"y" * 3000, [1000])
    body, stream = reader(raw, {"transfer-encoding": "chunked"})
    assert body.drain(len(raw)) is True
    assert stream.read() == NEXT_REQUEST
    body, _ = reader(raw, {"transfer-encoding": "chunked"})
    assert body.drain(100) is False


def test_drain_aws_chunked_skips_signature_checks() -> None:
    raw = doc_body(["0" * 64] * 3)
    body, stream = reader(raw, aws_headers("length", raw), SIGNED, doc_signing(DOC_CHUNKED[0]))
    assert body.drain(len(raw)) is True
    assert stream.read() == NEXT_REQUEST


def test_drain_after_truncation_fails() -> None:
    body, _ = reader(b"x" * 10, {"content-length": "100"}, extra=b"")
    assert body.drain(1000) is False
