"""Typed client errors, each carrying the errno the filesystem will answer with.

Hierarchy (one table, :data:`S3_CODES`, maps S3 error codes onto it)::

    ClientError                    errno EIO; every failure the client raises
    ├── NotFound                   ENOENT   NoSuchKey, NoSuchUpload, 404
    ├── BucketNotFound             ENOENT   NoSuchBucket (a mount-level problem)
    ├── AccessDenied               EACCES   AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch, 403
    ├── SessionUnavailable         EACCES   CreateSession failed and the last session has expired
    ├── PreconditionFailed         ESTALE   412, 409 ConditionalRequestConflict, InvalidWriteOffset
    ├── InvalidRange               EINVAL   416
    ├── InvalidRequest             EINVAL   InvalidRequest, InvalidArgument, MalformedXML, ...
    ├── NameTooLong                ENAMETOOLONG  KeyTooLongError
    ├── TooLarge                   EFBIG    TooManyParts, EntityTooLarge
    ├── NotSupported               EOPNOTSUPP  501 NotImplemented
    ├── ReadOnly                   EROFS    a write through a read-only client (never sent)
    └── Unavailable                EIO      throttling, 5xx, connection errors once retries are spent

``transient`` marks what a retry may fix; ``session`` marks token errors that a fresh session fixes.
"""

from __future__ import annotations

import errno as _errno


class ClientError(Exception):
    """A failed S3 request, with its S3 code (if any) and the errno to report."""

    errno: int = _errno.EIO
    transient: bool = False

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.key = key


class NotFound(ClientError):
    errno = _errno.ENOENT


class BucketNotFound(ClientError):
    errno = _errno.ENOENT


class AccessDenied(ClientError):
    errno = _errno.EACCES


class SessionUnavailable(ClientError):
    errno = _errno.EACCES


class PreconditionFailed(ClientError):
    errno = _errno.ESTALE


class InvalidRange(ClientError):
    errno = _errno.EINVAL


class InvalidRequest(ClientError):
    errno = _errno.EINVAL


class NameTooLong(ClientError):
    errno = _errno.ENAMETOOLONG


class TooLarge(ClientError):
    errno = _errno.EFBIG


class NotSupported(ClientError):
    errno = _errno.EOPNOTSUPP


class ReadOnly(ClientError):
    """A write through a read-only client (never sent)."""

    errno = _errno.EROFS


class Unavailable(ClientError):
    errno = _errno.EIO
    transient = True


class SessionExpired(ClientError):
    """The request's session token was refused: get a new session and retry once (internal)."""

    errno = _errno.EACCES


# The one table from S3 error codes to client errors.
S3_CODES: dict[str, type[ClientError]] = {
    "NoSuchKey": NotFound,
    "NoSuchUpload": NotFound,
    "NotFound": NotFound,
    "NoSuchBucket": BucketNotFound,
    "AccessDenied": AccessDenied,
    "InvalidAccessKeyId": AccessDenied,
    "SignatureDoesNotMatch": AccessDenied,
    "Forbidden": AccessDenied,
    "AllAccessDisabled": AccessDenied,
    "ExpiredToken": SessionExpired,
    "InvalidToken": SessionExpired,
    "TokenRefreshRequired": SessionExpired,
    "PreconditionFailed": PreconditionFailed,
    "ConditionalRequestConflict": PreconditionFailed,
    "InvalidWriteOffset": PreconditionFailed,
    "InvalidRange": InvalidRange,
    "InvalidRequest": InvalidRequest,
    "InvalidArgument": InvalidRequest,
    "MalformedXML": InvalidRequest,
    "InvalidPart": InvalidRequest,
    "InvalidPartOrder": InvalidRequest,
    "EntityTooSmall": InvalidRequest,
    "InvalidStorageClass": InvalidRequest,
    "BadDigest": InvalidRequest,
    "InvalidDigest": InvalidRequest,
    "XAmzContentSHA256Mismatch": InvalidRequest,
    "KeyTooLongError": NameTooLong,
    "TooManyParts": TooLarge,
    "EntityTooLarge": TooLarge,
    "NotImplemented": NotSupported,
    "SlowDown": Unavailable,
    "ServiceUnavailable": Unavailable,
    "InternalError": Unavailable,
    "RequestTimeout": Unavailable,
    "RequestTimeTooSkewed": AccessDenied,
}
# When a response carries no usable code (HEAD has no body), its status decides.
HTTP_STATUSES: dict[int, type[ClientError]] = {
    403: AccessDenied,
    404: NotFound,
    409: PreconditionFailed,
    412: PreconditionFailed,
    416: InvalidRange,
    500: Unavailable,
    501: NotSupported,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def from_s3(code: str | None, status: int | None, message: str, key: str | None = None) -> ClientError:
    """The typed error for an S3 error response."""
    cls = S3_CODES.get(code or "") or HTTP_STATUSES.get(status or 0) or (Unavailable if (status or 0) >= 500 else ClientError)
    return cls(message, code=code, status=status, key=key)
