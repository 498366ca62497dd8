"""Who is calling, with which credentials, and may they do this?

Directory buckets: data-plane operations must carry a CreateSession token for that very bucket
(signed with the session's key), a ReadOnly session may only read, and CreateSession,
CopyObject and UploadPartCopy are signed with the principal's own (IAM) keys. General purpose
buckets: plain SigV4 with the principal's keys, writes need ReadWrite in the principal's table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import errors, sigv4
from .faults import FaultInjector
from .http import Request
from .principals import Principal
from .sessions import Session, SessionStore
from .stats import MUTATING_OPERATIONS

# What a ReadOnly session may call (CreateSession API reference, SessionMode).
READ_ONLY_OPERATIONS = frozenset(
    {"GetObject", "HeadObject", "ListObjectsV2", "GetObjectAttributes", "ListParts", "ListMultipartUploads", "HeadBucket"}
)
# Directory-bucket operations signed with IAM credentials rather than a session (HeadBucket
# accepts both: the documentation says IAM, botocore sends a session).
IAM_SIGNED = frozenset({"CreateSession", "CopyObject", "UploadPartCopy", "HeadBucket"})
CONTROL_PLANE = frozenset({"CreateBucket", "DeleteBucket", "ListBuckets"})


@dataclass(frozen=True)
class Caller:
    principal: Principal
    session: Session | None
    credential: sigv4.Credential
    signing_key: bytes

    @property
    def mode(self) -> str:
        """Session mode for the access log: ReadOnly, ReadWrite, or IAM."""
        return self.session.mode if self.session else "IAM"


class Authenticator:
    def __init__(self, region: str, principals: list[Principal], sessions: SessionStore, faults: FaultInjector) -> None:
        self.region = region
        self._principals = {p.access_key: p for p in principals}
        self.sessions = sessions
        self._faults = faults

    def authenticate(self, request: Request, bucket: str | None, directory: bool, operation: str) -> Caller:
        """Who signed the request (signature, time, scope and token checked); see :meth:`authorize`."""
        view = sigv4.RequestView(request.method, request.raw_path, request.raw_query, request.headers)
        credential = sigv4.parse_authorization(view)
        if credential is None:
            raise errors.access_denied("Anonymous requests are not accepted; sign the request with SigV4.")
        sigv4.check_time(credential, time.time())
        self._check_scope(credential, directory, operation)
        if credential.session_token is not None:
            session = self._session(credential, bucket, directory, operation)
            key = sigv4.verify(view, credential, session.secret_key)
            return Caller(session.principal, session, credential, key)
        principal = self._principals.get(credential.access_key)
        if principal is None:
            raise errors.S3Error(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.",
                                 {"AWSAccessKeyId": credential.access_key})
        key = sigv4.verify(view, credential, principal.secret_key)
        return Caller(principal, None, credential, key)

    def authorize(self, caller: Caller, bucket: str | None, directory: bool, operation: str) -> None:
        """May this authenticated caller do ``operation``? (Separate so that a denial is logged
        with the caller's credential kind.)"""
        if caller.session is not None:
            self._authorize_session(caller.session, operation)
            return
        if directory and operation not in IAM_SIGNED and operation not in CONTROL_PLANE:
            raise errors.access_denied(
                f"{operation} on a directory bucket must be signed with CreateSession credentials "
                "(x-amz-s3session-token); call CreateSession first."
            )
        if bucket is not None and operation not in ("CreateSession", "ListBuckets"):
            self.authorize_principal(caller.principal, bucket, operation in MUTATING_OPERATIONS)

    @staticmethod
    def authorize_principal(principal: Principal, bucket: str, write: bool) -> None:
        modes = principal.modes_for(bucket)
        if not modes or (write and "ReadWrite" not in modes):
            what = "write to" if write else "read from"
            raise errors.access_denied(f"Principal {principal.name} may not {what} bucket {bucket}.")

    def _check_scope(self, credential: sigv4.Credential, directory: bool, operation: str) -> None:
        code = "AuthorizationQueryParametersError" if credential.presigned else "AuthorizationHeaderMalformed"
        if credential.region != self.region:
            raise errors.S3Error(400, code,
                                 f"The authorization header is malformed; the region '{credential.region}' is wrong; expecting '{self.region}'",
                                 {"Region": self.region})
        if operation in CONTROL_PLANE:
            allowed: tuple[str, ...] = ("s3", "s3express")
        else:
            allowed = ("s3express",) if directory else ("s3",)
        if credential.service not in allowed:
            raise errors.S3Error(400, code,
                                 f"The authorization header is malformed; incorrect service '{credential.service}'. "
                                 f"This endpoint belongs to '{allowed[0]}'.")

    def _session(self, credential: sigv4.Credential, bucket: str | None, directory: bool, operation: str) -> Session:
        if not directory:
            raise errors.invalid_request("x-amz-s3session-token is only accepted for directory buckets.")
        if operation in ("CreateSession", "CopyObject", "UploadPartCopy") or operation in CONTROL_PLANE:
            raise errors.access_denied(f"{operation} must be signed with IAM credentials, not with session credentials.")
        session = self.sessions.get(credential.session_token or "")
        if session is None:
            raise errors.S3Error(400, "InvalidToken", "The provided token is malformed or otherwise invalid.")
        if session.bucket != bucket:
            raise errors.access_denied("The session token was issued for another bucket.")
        if credential.access_key != session.access_key:
            raise errors.S3Error(403, "InvalidAccessKeyId", "The access key does not belong to the session token.",
                                 {"AWSAccessKeyId": credential.access_key})
        if session.expired(time.time()):
            raise errors.S3Error(400, "ExpiredToken", "The provided token has expired.")
        if self._faults.draw(self._faults.config.expire_token_rate):
            self.sessions.expire(session)
            raise errors.S3Error(400, "ExpiredToken", "The provided token has expired.")
        return session

    @staticmethod
    def _authorize_session(session: Session, operation: str) -> None:
        if session.mode == "ReadOnly" and operation not in READ_ONLY_OPERATIONS:
            raise errors.access_denied(f"{operation} is not allowed with a ReadOnly session; create a ReadWrite session.")
