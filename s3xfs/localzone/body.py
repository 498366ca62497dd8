"""Request body readers: HTTP framing, aws-chunked decoding and integrity checks, streaming.

S3 rejects a body whose chunk signatures, declared lengths or x-amz-content-sha256 do not
hold; clients rely on that (a torn upload must not become an object), so the local endpoint
does the same. Everything streams: memory use is bounded by the caller's read size plus one
chunk header, so multi-GB uploads work, and a plain Content-Length body with no hash to check
is close to a direct passthrough of the socket file.

Layers: a *source* removes the HTTP framing (Content-Length or ``Transfer-Encoding: chunked``),
an optional *aws-chunked decoder* removes S3's own chunk framing and checks chunk signatures,
and :class:`BodyReader` counts the decoded bytes and checks lengths and the SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from . import errors
from .errors import S3Error

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_HEX_SHA256_RE = re.compile(rb"[0-9a-f]{64}\Z")
_HEX_SIZE_RE = re.compile(rb"[0-9a-fA-F]{1,16}\Z")
_MAX_LINE = 8192  # chunk header or trailer line, including extensions
_MAX_TRAILER_LINES = 64
_DISCARD_BLOCK = 1 << 16
_READ_ALL_BLOCK = 1 << 20

SIGNED_STREAMING = frozenset(
    {"STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"}
)
STREAMING = SIGNED_STREAMING | {"STREAMING-UNSIGNED-PAYLOAD-TRAILER"}


@dataclass(frozen=True)
class ChunkSigning:
    """What chunk signatures chain from: only for STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]."""

    signing_key: bytes
    amz_date: str
    scope: str
    seed_signature: str  # the request's own signature


def _malformed(message: str) -> S3Error:
    return S3Error(400, "InvalidRequest", message)


def _incomplete(message: str | None = None) -> S3Error:
    error = errors.incomplete_body()
    if message:
        error.message = message
    return error


def _parse_trailer_line(line: bytes) -> tuple[str, str]:
    name, colon, value = line.partition(b":")
    name = name.strip()
    if not colon or not name:
        raise _malformed(f"Malformed trailer line {line[:100]!r}.")
    try:
        return name.decode("ascii").lower(), value.strip().decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed(f"Malformed trailer line {line[:100]!r}.") from None


# --------------------------------------------------------------------------------------------
# Sources: the HTTP framing


class _Source(Protocol):
    raw_bytes_read: int
    broken: bool  # the connection's framing is lost: it cannot be reused

    def read(self, n: int) -> bytes: ...  # 1..n bytes, b'' at the end of the body
    def readline(self, limit: int) -> bytes: ...  # up to and including b'\n', b'' at the end
    def at_end(self) -> bool: ...
    def discard(self, limit: int) -> bool: ...


class _LengthSource:
    """A body framed by Content-Length (or empty)."""

    def __init__(self, stream: BinaryIO, length: int) -> None:
        self._stream = stream
        self._remaining = length
        self.raw_bytes_read = 0
        self.broken = False

    def read(self, n: int) -> bytes:
        want = self._remaining if n < 0 else min(n, self._remaining)
        if want <= 0:
            return b""
        data = self._stream.read(want)
        if not data:
            self.broken = True
            raise _incomplete()
        self._remaining -= len(data)
        self.raw_bytes_read += len(data)
        return data

    def readline(self, limit: int) -> bytes:
        want = min(limit, self._remaining)
        if want <= 0:
            return b""
        line = self._stream.readline(want)
        if len(line) < want and not line.endswith(b"\n"):  # the socket ended mid-line
            self.broken = True
            raise _incomplete()
        self._remaining -= len(line)
        self.raw_bytes_read += len(line)
        return line

    def at_end(self) -> bool:
        return self._remaining == 0

    def discard(self, limit: int) -> bool:
        if self._remaining > limit:
            return False
        try:
            while self.read(_DISCARD_BLOCK):
                pass
        except S3Error:
            return False
        return True


class _HttpChunkedSource:
    """A body framed by ``Transfer-Encoding: chunked``; extensions ignored, trailers kept."""

    def __init__(self, stream: BinaryIO, trailers: dict[str, str]) -> None:
        self._stream = stream
        self._trailers = trailers
        self._chunk_left = 0
        self._done = False
        self.raw_bytes_read = 0
        self.broken = False

    def _line(self) -> bytes:
        line = self._stream.readline(_MAX_LINE)
        self.raw_bytes_read += len(line)
        if not line:
            self.broken = True
            raise _incomplete()
        if not line.endswith(b"\n"):
            self.broken = True
            if len(line) < _MAX_LINE:
                raise _incomplete()
            raise _malformed("HTTP chunk header or trailer line too long.")
        return line

    def _next_chunk(self) -> None:
        """Read a chunk-size line; at the last chunk read the trailers and mark the end."""
        line = self._line()
        size = line.split(b";", 1)[0].strip()
        if not _HEX_SIZE_RE.match(size):
            self.broken = True
            raise _malformed(f"Malformed HTTP chunk size line {line[:100]!r}.")
        self._chunk_left = int(size, 16)
        if self._chunk_left:
            return
        for _ in range(_MAX_TRAILER_LINES + 1):
            line = self._line().rstrip(b"\r\n")
            if not line:
                self._done = True
                return
            try:
                name, value = _parse_trailer_line(line)
            except S3Error:
                self.broken = True
                raise
            self._trailers[name] = value
        self.broken = True
        raise _malformed("Too many HTTP trailer lines.")

    def _end_chunk(self) -> None:
        crlf = self._stream.read(2)
        self.raw_bytes_read += len(crlf)
        if crlf != b"\r\n":
            self.broken = True
            if len(crlf) < 2:
                raise _incomplete()
            raise _malformed("HTTP chunk data is not followed by CRLF.")

    def read(self, n: int) -> bytes:
        if self._done or n == 0:
            return b""
        if self._chunk_left == 0:
            self._next_chunk()
            if self._done:
                return b""
        want = self._chunk_left if n < 0 else min(n, self._chunk_left)
        data = self._stream.read(want)
        if not data:
            self.broken = True
            raise _incomplete()
        self.raw_bytes_read += len(data)
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._end_chunk()
        return data

    def readline(self, limit: int) -> bytes:
        parts: list[bytes] = []
        while limit > 0:
            if self._chunk_left == 0:
                if self._done:
                    break
                self._next_chunk()
                if self._done:
                    break
            piece = self._stream.readline(min(limit, self._chunk_left))
            if not piece:
                self.broken = True
                raise _incomplete()
            self.raw_bytes_read += len(piece)
            self._chunk_left -= len(piece)
            limit -= len(piece)
            parts.append(piece)
            if self._chunk_left == 0:
                self._end_chunk()
            if piece.endswith(b"\n"):
                break
        return b"".join(parts)

    def at_end(self) -> bool:
        if self._chunk_left == 0 and not self._done:
            self._next_chunk()
        return self._done

    def discard(self, limit: int) -> bool:
        start = self.raw_bytes_read
        try:
            while self.read(_DISCARD_BLOCK):
                if self.raw_bytes_read - start > limit:
                    return False
        except S3Error:
            return False
        return self.raw_bytes_read - start <= limit


# --------------------------------------------------------------------------------------------
# aws-chunked


class _AwsChunkedDecoder:
    """S3's ``aws-chunked`` content encoding on top of a source, checking chunk signatures.

    Chunk data is handed out as it arrives and hashed on the way; the chunk's signature is
    checked before its last bytes are returned, so a bad chunk always fails some read() before
    the body can be seen as complete.
    """

    def __init__(
        self,
        source: _Source,
        signing: ChunkSigning | None,
        with_trailer: bool,
        expect_trailer: bool,
        trailers: dict[str, str],
    ) -> None:
        self._source = source
        self._signing = signing
        self._with_trailer = with_trailer
        self._expect_trailer = expect_trailer
        self._trailers = trailers
        self._previous = signing.seed_signature if signing else ""
        self._chunk_left = 0
        self._chunk_signature = ""
        self._hasher = hashlib.sha256() if signing else None
        self._done = False

    def _line(self) -> bytes:
        line = self._source.readline(_MAX_LINE)
        if not line.endswith(b"\n"):
            if len(line) < _MAX_LINE:
                raise _incomplete("The aws-chunked body ended before its final chunk.")
            raise _malformed("aws-chunked chunk header or trailer line too long.")
        return line.rstrip(b"\r\n")

    def _read_exact(self, n: int) -> bytes:
        parts = []
        while n:
            piece = self._source.read(n)
            if not piece:
                raise _incomplete("The aws-chunked body ended inside a chunk.")
            parts.append(piece)
            n -= len(piece)
        return b"".join(parts)

    def _check_signature(self, string_to_sign: str, provided: str, what: str) -> None:
        assert self._signing is not None
        computed = hmac.new(
            self._signing.signing_key, string_to_sign.encode("utf-8"), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(computed.encode("ascii"), provided.encode("ascii", "replace")):
            raise S3Error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method.",
                {"Reason": f"bad {what} signature", "StringToSign": string_to_sign,
                 "SignatureProvided": provided},
            )
        self._previous = provided

    def _verify_chunk(self) -> None:
        if self._signing is None:
            return
        assert self._hasher is not None
        s = self._signing
        self._check_signature(
            f"AWS4-HMAC-SHA256-PAYLOAD\n{s.amz_date}\n{s.scope}\n{self._previous}\n"
            f"{_EMPTY_SHA256}\n{self._hasher.hexdigest()}",
            self._chunk_signature,
            "chunk",
        )

    def _next_header(self) -> None:
        line = self._line()
        size, _, extensions = line.partition(b";")
        size = size.strip()
        if not _HEX_SIZE_RE.match(size):
            raise _malformed(f"Malformed aws-chunked chunk header {line[:100]!r}.")
        signature = ""
        for extension in extensions.split(b";") if extensions else ():
            name, _, value = extension.partition(b"=")
            if name.strip() == b"chunk-signature":
                signature = value.strip().decode("ascii", "replace")
        if self._signing is not None and not signature:
            raise S3Error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method.",
                {"Reason": "aws-chunked chunk without a chunk-signature"},
            )
        self._chunk_signature = signature
        self._chunk_left = int(size, 16)
        if self._hasher is not None:
            self._hasher = hashlib.sha256()
        if self._chunk_left == 0:
            self._verify_chunk()
            self._read_trailers()
            self._done = True

    def _end_chunk(self) -> None:
        if self._read_exact(2) != b"\r\n":
            raise _malformed("aws-chunked chunk data is not followed by CRLF.")
        self._verify_chunk()

    def _read_trailers(self) -> None:
        lines: list[tuple[str, str]] = []
        signature: str | None = None
        for _ in range(_MAX_TRAILER_LINES + 1):
            if (lines or signature is not None) and self._source.at_end():
                break  # that published form also omits the closing blank line
            line = self._line()
            if not line:
                # Some published examples put the blank line before the trailers: accept that
                # form when a trailer was announced, none came yet, and more data follows.
                if self._expect_trailer and not lines and signature is None:
                    self._expect_trailer = False
                    if not self._source.at_end():
                        continue
                break
            name, value = _parse_trailer_line(line)
            if name == "x-amz-trailer-signature":
                signature = value
            else:
                lines.append((name, value))
        else:
            raise _malformed("Too many aws-chunked trailer lines.")
        if (lines or signature is not None) and not self._with_trailer:
            raise _malformed(
                "Trailers are only allowed when x-amz-content-sha256 is a -TRAILER variant."
            )
        if self._signing is not None and self._with_trailer:
            if signature is None:
                raise S3Error(
                    403,
                    "SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you "
                    "provided. Check your key and signing method.",
                    {"Reason": "signed aws-chunked trailer without x-amz-trailer-signature"},
                )
            canonical = "".join(f"{name}:{value}\n" for name, value in lines)
            s = self._signing
            self._check_signature(
                f"AWS4-HMAC-SHA256-TRAILER\n{s.amz_date}\n{s.scope}\n{self._previous}\n"
                f"{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}",
                signature,
                "trailer",
            )
        self._trailers.update(lines)
        if not self._source.at_end():
            raise _malformed("Unexpected data after the final aws-chunked chunk.")

    def read(self, n: int) -> bytes:
        if self._done or n == 0:
            return b""
        if self._chunk_left == 0:
            self._next_header()
            if self._done:
                return b""
        want = self._chunk_left if n < 0 else min(n, self._chunk_left)
        data = self._source.read(want)
        if not data:
            raise _incomplete("The aws-chunked body ended inside a chunk.")
        self._chunk_left -= len(data)
        if self._hasher is not None:
            self._hasher.update(data)
        if self._chunk_left == 0:
            self._end_chunk()
        return data


# --------------------------------------------------------------------------------------------
# The reader handlers use


class BodyReader:
    """The decoded request body. Errors surface as :class:`S3Error` from :meth:`read`.

    ``read(n)`` returns exactly ``n`` bytes unless the end comes first (like a buffered file);
    the end is reached, and every length, signature and hash check done, no later than the
    read that returns b'' -- or, when the decoded length is declared, the read that returns the
    last byte. Only trust the data once :attr:`at_eof` is true.
    """

    def __init__(
        self,
        source: _Source,
        pull: Callable[[int], bytes],
        declared: int | None,
        expected_sha256: str | None,
        trailers: dict[str, str],
    ) -> None:
        self._source = source
        self._pull = pull
        self._declared = declared
        self._expected_sha256 = expected_sha256
        self._hasher = hashlib.sha256() if expected_sha256 else None
        self._decoded = 0
        self._eof = False
        self._abandoned = False
        self._failed: S3Error | None = None
        self.trailers = trailers

    @property
    def declared_length(self) -> int | None:
        """Decoded length known up front: x-amz-decoded-content-length or Content-Length."""
        return self._declared

    @property
    def raw_bytes_read(self) -> int:
        """Bytes consumed from the socket, framing included (for statistics)."""
        return self._source.raw_bytes_read

    @property
    def at_eof(self) -> bool:
        """The whole body, final chunk and trailers included, was consumed and verified."""
        return self._eof

    def read(self, n: int = -1) -> bytes:
        if self._failed is not None:
            raise self._failed
        if self._eof or self._abandoned or n == 0:
            return b""
        try:
            return self._read(n)
        except S3Error as error:
            self._failed = error
            raise

    def _read(self, n: int) -> bytes:
        parts: list[bytes] = []
        if n is None or n < 0:
            need = -1
            block = _READ_ALL_BLOCK
        else:
            need = n
            block = n
        while need:
            piece = self._pull(block if need < 0 else need)
            if not piece:
                self._finish()
                break
            self._account(piece)
            parts.append(piece)
            if need > 0:
                need -= len(piece)
        if self._declared is not None and self._decoded == self._declared and not self._eof:
            self._finish()
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    def _account(self, piece: bytes) -> None:
        self._decoded += len(piece)
        if self._declared is not None and self._decoded > self._declared:
            raise _incomplete(
                "The decoded body is longer than x-amz-decoded-content-length "
                f"({self._declared})."
            )
        if self._hasher is not None:
            self._hasher.update(piece)

    def _finish(self) -> None:
        """The decoded data has ended: consume the framing's end and run the final checks."""
        if self._pull(1):
            raise _incomplete(
                "The decoded body is longer than x-amz-decoded-content-length "
                f"({self._declared})."
            )
        if self._declared is not None and self._decoded != self._declared:
            raise _incomplete(
                f"The decoded body is {self._decoded} bytes, but "
                f"{self._declared} were declared."
            )
        if self._hasher is not None:
            computed = self._hasher.hexdigest()
            if computed != self._expected_sha256:
                raise errors.sha256_mismatch(self._expected_sha256 or "", computed)
        self._eof = True

    def drain(self, limit: int) -> bool:
        """Discard the rest of the body if at most ``limit`` raw bytes remain.

        Lets an error response go out on a connection that stays usable. Nothing is verified;
        afterwards read() returns b''. False when more remained or the framing is broken: the
        caller must then close the connection.
        """
        if self._eof:
            return True
        self._abandoned = True
        if self._source.broken:
            return False
        return self._source.discard(limit)


def make_body_reader(
    stream: BinaryIO,
    headers: Mapping[str, str],
    payload_hash: str | None,
    chunk_signing: ChunkSigning | None,
) -> BodyReader:
    """Pick the framing and decoding for a request body from its headers.

    ``payload_hash`` is the verified x-amz-content-sha256 (None for an anonymous request, in
    which case the header, if any, is used). ``chunk_signing`` is needed to check signed
    aws-chunked bodies; without it their chunk signatures are parsed but not checked (for a
    server running with authentication off).
    """
    trailers: dict[str, str] = {}
    if payload_hash is None:
        payload_hash = (headers.get("x-amz-content-sha256") or "").strip() or None

    transfer_encoding = headers.get("transfer-encoding")
    codings = [
        c.strip().lower() for c in (transfer_encoding or "").split(",") if c.strip()
    ]
    codings = [c for c in codings if c != "identity"]
    source: _Source
    content_length: int | None = None
    if codings == ["chunked"]:
        source = _HttpChunkedSource(stream, trailers)
    elif codings:
        raise S3Error(
            501,
            "NotImplemented",
            "A header you provided implies functionality that is not implemented",
            {"Header": "Transfer-Encoding"},
        )
    else:
        raw_length = headers.get("content-length")
        if raw_length is None:
            content_length = 0
        else:
            raw_length = raw_length.strip()
            if not raw_length.isascii() or not raw_length.isdigit():
                raise S3Error(
                    400,
                    "InvalidArgument",
                    "Content-Length must be a non-negative integer.",
                    {"ArgumentName": "Content-Length", "ArgumentValue": raw_length},
                )
            content_length = int(raw_length)
        source = _LengthSource(stream, content_length)

    expected_sha256 = None
    if payload_hash is not None and payload_hash.startswith("STREAMING-"):
        if payload_hash not in STREAMING:
            raise errors.invalid_argument(
                f"Unsupported x-amz-content-sha256 value {payload_hash}.",
                "x-amz-content-sha256",
                payload_hash,
            )
        declared = None
        raw_decoded = headers.get("x-amz-decoded-content-length")
        if raw_decoded is not None:
            raw_decoded = raw_decoded.strip()
            if not raw_decoded.isascii() or not raw_decoded.isdigit():
                raise errors.invalid_argument(
                    "x-amz-decoded-content-length must be a non-negative integer.",
                    "x-amz-decoded-content-length",
                    raw_decoded,
                )
            declared = int(raw_decoded)
        with_trailer = payload_hash.endswith("-TRAILER")
        decoder = _AwsChunkedDecoder(
            source,
            chunk_signing if payload_hash in SIGNED_STREAMING else None,
            with_trailer,
            with_trailer and bool(headers.get("x-amz-trailer")),
            trailers,
        )
        return BodyReader(source, decoder.read, declared, None, trailers)

    if payload_hash is not None and _HEX_SHA256_RE.match(payload_hash.encode("ascii", "replace")):
        expected_sha256 = payload_hash
    return BodyReader(source, source.read, content_length, expected_sha256, trailers)
