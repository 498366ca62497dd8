"""Object checksums (CRC32, CRC32C, SHA1, SHA256) computed while data streams through.

S3 carries checksums base64-encoded in ``x-amz-checksum-<algorithm>`` headers or aws-chunked
trailers. CRC64NVME is not implemented (no fast pure-Python form); requests asking for it get
a clear 400 rather than a silently unchecked upload.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Protocol

import google_crc32c

ALGORITHMS = ("CRC32", "CRC32C", "SHA1", "SHA256")


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc32:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes | memoryview) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


class _Crc32c:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes | memoryview) -> None:
        self._value = google_crc32c.extend(self._value, bytes(data) if isinstance(data, memoryview) else data)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


def new_hasher(algorithm: str) -> Hasher:
    """A fresh hasher for an S3 checksum algorithm name (upper case)."""
    if algorithm == "CRC32":
        return _Crc32()
    if algorithm == "CRC32C":
        return _Crc32c()
    if algorithm == "SHA1":
        return hashlib.sha1()
    if algorithm == "SHA256":
        return hashlib.sha256()
    raise ValueError(f"unsupported checksum algorithm {algorithm!r}")


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def composite(algorithm: str, part_checksums_b64: list[str]) -> str:
    """The COMPOSITE checksum of a multipart object: checksum of the parts' raw checksums, '-N'."""
    hasher = new_hasher(algorithm)
    for value in part_checksums_b64:
        hasher.update(base64.b64decode(value))
    return f"{b64(hasher.digest())}-{len(part_checksums_b64)}"


# --- CRC combination --------------------------------------------------------------------------
#
# zlib's crc32_combine (the GF(2) matrix method): the CRC of A+B from crc(A), crc(B) and len(B),
# without the bytes of A. Appending "len2 zero bytes" to a CRC register is a linear map over GF(2);
# its 32x32 matrix for 2**k bytes is the square of the one for 2**(k-1). Both CRC32 and CRC32C are
# reflected CRCs with the same pre/post conditioning (~0), which cancels out, so the same code works
# for either polynomial.

_CRC_POLYS = {"CRC32": 0xEDB88320, "CRC32C": 0x82F63B78}
_ZERO_OPERATORS: dict[int, list[list[int]]] = {}


def _gf2_times(matrix: list[int], vector: int) -> int:
    result = 0
    i = 0
    while vector:
        if vector & 1:
            result ^= matrix[i]
        vector >>= 1
        i += 1
    return result


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, row) for row in matrix]


def _zero_operators(poly: int) -> list[list[int]]:
    """Matrices that append 2**k zero bytes to a CRC register, k = 0..63 (computed once per poly)."""
    ops = _ZERO_OPERATORS.get(poly)
    if ops is None:
        one_bit = [poly] + [1 << n for n in range(31)]  # operator for a single zero bit
        m = _gf2_square(_gf2_square(_gf2_square(one_bit)))  # 8 bits = one zero byte
        ops = [m]
        for _ in range(63):
            m = _gf2_square(m)
            ops.append(m)
        _ZERO_OPERATORS[poly] = ops
    return ops


def combine_crc(algorithm: str, crc1: int, crc2: int, len2: int) -> int:
    """CRC (``CRC32`` or ``CRC32C``) of the concatenation A+B given crc1 = crc(A), crc2 = crc(B), len2 = len(B)."""
    try:
        poly = _CRC_POLYS[algorithm]
    except KeyError:
        raise ValueError(f"cannot combine {algorithm!r} checksums") from None
    if len2 < 0:
        raise ValueError("negative length")
    ops = _zero_operators(poly)
    k = 0
    while len2:
        if len2 & 1:
            crc1 = _gf2_times(ops[k], crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2
