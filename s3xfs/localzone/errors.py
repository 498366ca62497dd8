"""S3 errors as the local endpoint returns them.

Every failure a handler wants the client to see is raised as :class:`S3Error`; the server turns it
into an XML error document (or a bare status for HEAD). Codes and statuses follow the S3 API
reference; where S3 Express One Zone behaviour is unconfirmed the choice is written in
docs/LOCALZONE.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class S3Error(Exception):
    """An S3 error response: HTTP status, S3 code, message and extra XML elements."""

    status: int
    code: str
    message: str
    extra: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def access_denied(message: str = "Access Denied") -> S3Error:
    return S3Error(403, "AccessDenied", message)


def invalid_argument(message: str, name: str = "", value: str = "") -> S3Error:
    extra = {"ArgumentName": name, "ArgumentValue": value} if name else {}
    return S3Error(400, "InvalidArgument", message, extra)


def invalid_request(message: str) -> S3Error:
    return S3Error(400, "InvalidRequest", message)


def no_such_bucket(bucket: str) -> S3Error:
    return S3Error(404, "NoSuchBucket", "The specified bucket does not exist", {"BucketName": bucket})


def no_such_key(key: str) -> S3Error:
    return S3Error(404, "NoSuchKey", "The specified key does not exist.", {"Key": key})


def no_such_upload(upload_id: str) -> S3Error:
    return S3Error(
        404,
        "NoSuchUpload",
        "The specified multipart upload does not exist. The upload ID may be invalid, "
        "or the upload may have been aborted or completed.",
        {"UploadId": upload_id},
    )


def precondition_failed(condition: str) -> S3Error:
    return S3Error(
        412,
        "PreconditionFailed",
        "At least one of the pre-conditions you specified did not hold",
        {"Condition": condition},
    )


def conditional_conflict() -> S3Error:
    return S3Error(
        409,
        "ConditionalRequestConflict",
        "A conflicting operation occurred. If using PutObject you can retry the request. "
        "If using multipart upload you should initiate another CreateMultipartUpload request "
        "and re-upload each part.",
    )


def not_implemented(message: str) -> S3Error:
    return S3Error(501, "NotImplemented", message)


def bad_digest(algorithm: str) -> S3Error:
    return S3Error(
        400, "BadDigest", f"The {algorithm} you specified did not match the calculated checksum."
    )


def sha256_mismatch(client: str, computed: str) -> S3Error:
    return S3Error(
        400,
        "XAmzContentSHA256Mismatch",
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
        {"ClientComputedContentSHA256": client, "S3ComputedContentSHA256": computed},
    )


def incomplete_body() -> S3Error:
    return S3Error(
        400,
        "IncompleteBody",
        "You did not provide the number of bytes specified by the Content-Length HTTP header",
    )


def malformed_xml() -> S3Error:
    return S3Error(
        400,
        "MalformedXML",
        "The XML you provided was not well-formed or did not validate against our published schema",
    )


def internal_error() -> S3Error:
    return S3Error(500, "InternalError", "We encountered an internal error. Please try again.")


def slow_down() -> S3Error:
    return S3Error(503, "SlowDown", "Please reduce your request rate.")
