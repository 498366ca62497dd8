"""AWS Signature Version 4 verification, server side.

The local endpoint checks signatures the way S3 does so that a client bug in signing (wrong
service name, wrong session credentials, a path escaped differently) fails here first rather
than against the real service. Standard library only: this module must not share code with
the clients it is judging.

Flow per request: :func:`parse_authorization` (syntax, no secrets) -> look the access key up ->
:func:`check_time` -> :func:`verify`, which returns the signing key that the aws-chunked body
reader needs to check chunk signatures.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from urllib.parse import quote, unquote, unquote_to_bytes

from .errors import S3Error

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOADS = frozenset(
    {
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
    }
)
MAX_SKEW_SECONDS = 15 * 60
MAX_EXPIRES = 604800  # a week: S3's ceiling for presigned URLs

_SIGV2_MESSAGE = (
    "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
)
_MISMATCH_MESSAGE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your key and signing method."
)
_DATE_MESSAGE = "AWS authentication requires a valid Date or x-amz-date header"
_QUERY_PARAMS_MESSAGE = (
    "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
    "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
)

_AMZ_DATE_RE = re.compile(r"\d{8}T\d{6}Z\Z", re.ASCII)
_SCOPE_DATE_RE = re.compile(r"\d{8}\Z", re.ASCII)
_SIGNATURE_RE = re.compile(r"[0-9a-fA-F]{64}\Z", re.ASCII)
_SHA256_RE = re.compile(r"[0-9a-f]{64}\Z", re.ASCII)
_UNRESERVED_RE = re.compile(r"[A-Za-z0-9_.~-]*\Z", re.ASCII)
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+\Z", re.ASCII)

# Presigned-URL parameter names are case-sensitive in S3.
_Q_ALGORITHM = "X-Amz-Algorithm"
_Q_CREDENTIAL = "X-Amz-Credential"
_Q_DATE = "X-Amz-Date"
_Q_EXPIRES = "X-Amz-Expires"
_Q_SIGNED_HEADERS = "X-Amz-SignedHeaders"
_Q_SIGNATURE = "X-Amz-Signature"
_Q_SESSION_TOKEN = "X-Amz-S3session-Token"


@dataclass(frozen=True)
class RequestView:
    """The parts of an HTTP request that SigV4 covers, as they came off the wire."""

    method: str
    raw_path: str  # path exactly as on the request line, before '?', still percent-encoded
    raw_query: str  # exactly what followed '?' on the request line ('' if none)
    headers: Mapping[str, str]  # lower-cased names; repeated headers already joined with ','


@dataclass(frozen=True)
class Credential:
    """What a request claims about its signature; nothing here has been verified yet."""

    access_key: str
    date: str  # yyyymmdd from the credential scope
    region: str
    service: str  # 's3' or 's3express' (whatever the client put in the scope)
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str  # yyyymmddTHHMMSSZ
    presigned: bool
    expires: int | None  # X-Amz-Expires for presigned
    payload_hash: str  # x-amz-content-sha256; 'UNSIGNED-PAYLOAD' for presigned
    session_token: str | None  # x-amz-s3session-token header or X-Amz-S3session-Token query param

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


# --------------------------------------------------------------------------------------------
# Parsing


def _malformed(presigned: bool, message: str) -> S3Error:
    if presigned:
        return S3Error(400, "AuthorizationQueryParametersError", message)
    return S3Error(400, "AuthorizationHeaderMalformed", message)


def _split_query(raw_query: str) -> list[tuple[str, str]]:
    """Raw (still encoded) key/value pairs; a key without '=' has value ''."""
    pairs = []
    for piece in raw_query.split("&"):
        if piece:
            key, _, value = piece.partition("=")
            pairs.append((key, value))
    return pairs


def _parse_scope(credential: str, presigned: bool) -> tuple[str, str, str, str]:
    parts = credential.split("/")
    what = "X-Amz-Credential" if presigned else "Credential"
    if len(parts) != 5 or not all(parts[:4]):
        raise _malformed(
            presigned,
            f"The {what} is malformed; expected "
            f'"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request", got "{credential}".',
        )
    access_key, date, region, service, terminator = parts
    if terminator != "aws4_request":
        raise _malformed(
            presigned,
            f'The {what} is mal-formed; expecting "aws4_request" as the terminator, '
            f'got "{terminator}".',
        )
    if not _valid_date(date):
        raise _malformed(
            presigned, f'The {what} is mal-formed; the date "{date}" is not a valid YYYYMMDD date.'
        )
    return access_key, date, region, service


def _valid_date(date: str) -> bool:
    if not _SCOPE_DATE_RE.match(date):
        return False
    try:
        datetime(int(date[:4]), int(date[4:6]), int(date[6:8]))
    except ValueError:
        return False
    return True


def _amz_epoch(amz_date: str) -> float | None:
    """Seconds since the epoch for yyyymmddTHHMMSSZ, or None if it is not a real time."""
    if not _AMZ_DATE_RE.match(amz_date):
        return None
    try:
        moment = datetime(
            int(amz_date[0:4]),
            int(amz_date[4:6]),
            int(amz_date[6:8]),
            int(amz_date[9:11]),
            int(amz_date[11:13]),
            int(amz_date[13:15]),
            tzinfo=timezone.utc,
        )
    except ValueError:
        return None
    return moment.timestamp()


def _parse_signed_headers(value: str, presigned: bool) -> tuple[str, ...]:
    names = tuple(value.split(";"))
    if not value or not all(_HEADER_NAME_RE.match(name) for name in names):
        raise _malformed(presigned, f'The SignedHeaders list "{value}" is malformed.')
    if "host" not in names:
        raise _malformed(
            presigned, "The host header must be signed: it is missing from SignedHeaders."
        )
    return names


def _check_signature_syntax(signature: str, presigned: bool) -> str:
    if not _SIGNATURE_RE.match(signature):
        raise _malformed(presigned, "The signature must be 64 hexadecimal characters.")
    return signature.lower()


def parse_authorization(req: RequestView) -> Credential | None:
    """Parse the SigV4 claims of a request (header or presigned); None when it is anonymous.

    Only syntax is checked here, so that errors come out in the same order as S3's and no
    secret lookup happens for a request that could never verify.
    """
    header = req.headers.get("authorization")
    query_auth: dict[str, str] | None = None
    if "X-Amz-" in req.raw_query or "AWSAccessKeyId" in req.raw_query:
        query_auth = {}
        for key, value in _split_query(req.raw_query):
            if key.startswith("X-Amz-") or key == "AWSAccessKeyId":
                query_auth.setdefault(key, unquote(value))
        if "AWSAccessKeyId" in query_auth and _Q_ALGORITHM not in query_auth:
            raise S3Error(400, "InvalidRequest", _SIGV2_MESSAGE)
        if _Q_ALGORITHM not in query_auth:
            query_auth = None
    if header is not None and query_auth is not None:
        raise S3Error(
            400,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified",
            {"ArgumentName": "Authorization", "ArgumentValue": header},
        )
    if header is not None:
        return _parse_header(req, header)
    if query_auth is not None:
        return _parse_presigned(req, query_auth)
    return None


def _parse_header(req: RequestView, header: str) -> Credential:
    header = header.strip()
    algorithm, _, rest = header.partition(" ")
    if algorithm == "AWS":
        raise S3Error(400, "InvalidRequest", _SIGV2_MESSAGE)
    if algorithm != ALGORITHM:
        raise S3Error(
            400,
            "InvalidArgument",
            "Unsupported Authorization Type",
            {"ArgumentName": "Authorization", "ArgumentValue": header},
        )
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name in fields:
            raise _malformed(False, f'The authorization header is malformed; "{part.strip()}".')
        fields[name] = value.strip()
    missing = [n for n in ("Credential", "SignedHeaders", "Signature") if n not in fields]
    if missing or len(fields) != 3:
        raise _malformed(
            False,
            "The authorization header is malformed; it must contain exactly Credential, "
            f"SignedHeaders and Signature (missing: {', '.join(missing) or 'none'}).",
        )
    access_key, date, region, service = _parse_scope(fields["Credential"], False)
    signed_headers = _parse_signed_headers(fields["SignedHeaders"], False)
    signature = _check_signature_syntax(fields["Signature"], False)

    amz_date = req.headers.get("x-amz-date")
    if amz_date is None or _amz_epoch(amz_date.strip()) is None:
        raise S3Error(403, "AccessDenied", _DATE_MESSAGE)
    payload_hash = req.headers.get("x-amz-content-sha256")
    if payload_hash is None:
        raise S3Error(
            400, "InvalidRequest", "Missing required header for this request: x-amz-content-sha256"
        )
    payload_hash = payload_hash.strip()
    if not (
        payload_hash == UNSIGNED_PAYLOAD
        or payload_hash in STREAMING_PAYLOADS
        or _SHA256_RE.match(payload_hash)
    ):
        raise S3Error(
            400,
            "InvalidArgument",
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER "
            "or a valid sha256 value.",
            {"ArgumentName": "x-amz-content-sha256", "ArgumentValue": payload_hash},
        )
    return Credential(
        access_key=access_key,
        date=date,
        region=region,
        service=service,
        signed_headers=signed_headers,
        signature=signature,
        amz_date=amz_date.strip(),
        presigned=False,
        expires=None,
        payload_hash=payload_hash,
        session_token=req.headers.get("x-amz-s3session-token"),
    )


def _parse_presigned(req: RequestView, params: dict[str, str]) -> Credential:
    if params[_Q_ALGORITHM] != ALGORITHM:
        raise _malformed(
            True,
            f'X-Amz-Algorithm only supports "{ALGORITHM}", got "{params[_Q_ALGORITHM]}".',
        )
    if _Q_DATE not in params or _amz_epoch(params[_Q_DATE]) is None:
        raise S3Error(403, "AccessDenied", _DATE_MESSAGE)
    if any(
        n not in params for n in (_Q_CREDENTIAL, _Q_SIGNED_HEADERS, _Q_SIGNATURE, _Q_EXPIRES)
    ):
        raise _malformed(True, _QUERY_PARAMS_MESSAGE)
    access_key, date, region, service = _parse_scope(params[_Q_CREDENTIAL], True)
    signed_headers = _parse_signed_headers(params[_Q_SIGNED_HEADERS], True)
    signature = _check_signature_syntax(params[_Q_SIGNATURE], True)
    raw_expires = params[_Q_EXPIRES]
    if not raw_expires.isascii() or not raw_expires.lstrip("-").isdigit():
        raise _malformed(True, "X-Amz-Expires should be a number")
    expires = int(raw_expires)
    if expires < 1:
        raise _malformed(True, "X-Amz-Expires must be a positive number of seconds")
    if expires > MAX_EXPIRES:
        raise _malformed(
            True, "X-Amz-Expires must be less than a week (in seconds) that is 604800"
        )
    token = params.get(_Q_SESSION_TOKEN)
    if token is None:
        token = req.headers.get("x-amz-s3session-token")
    return Credential(
        access_key=access_key,
        date=date,
        region=region,
        service=service,
        signed_headers=signed_headers,
        signature=signature,
        amz_date=params[_Q_DATE],
        presigned=True,
        expires=expires,
        payload_hash=UNSIGNED_PAYLOAD,
        session_token=token,
    )


# --------------------------------------------------------------------------------------------
# Time


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_time(cred: Credential, now: float) -> None:
    """Reject requests signed too far from ``now`` (epoch seconds), and expired presigned URLs.

    This bounds how long a captured request can be replayed, as S3 does.
    """
    if cred.amz_date[:8] != cred.date:
        raise _malformed(
            cred.presigned,
            f'The credential scope date "{cred.date}" does not match the request date '
            f'"{cred.amz_date[:8]}" (from X-Amz-Date).',
        )
    signed_at = _amz_epoch(cred.amz_date)
    if signed_at is None:  # parse_authorization already rejects these
        raise S3Error(403, "AccessDenied", _DATE_MESSAGE)
    if cred.presigned:
        if signed_at - now > MAX_SKEW_SECONDS:
            raise S3Error(403, "AccessDenied", "Request is not valid yet")
        expires_at = signed_at + (cred.expires or 0)
        if now > expires_at:
            raise S3Error(
                403,
                "AccessDenied",
                "Request has expired",
                {
                    "X-Amz-Expires": str(cred.expires),
                    "Expires": _iso(expires_at),
                    "ServerTime": _iso(now),
                },
            )
        return
    if abs(signed_at - now) > MAX_SKEW_SECONDS:
        raise S3Error(
            403,
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
            {
                "RequestTime": cred.amz_date,
                "ServerTime": _iso(now),
                "MaxAllowedSkewMilliseconds": str(MAX_SKEW_SECONDS * 1000),
            },
        )


# --------------------------------------------------------------------------------------------
# Signing


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


@lru_cache(maxsize=512)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The derived SigV4 key; memoised because it is four HMACs on every request's hot path."""
    key = _hmac(("AWS4" + secret).encode("utf-8"), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def _aws_quote(data: bytes, safe: str) -> str:
    """S3's URI encoding: unreserved characters kept, every other byte %XX upper case."""
    return quote(data, safe=safe)


def _canonical_component(raw: str) -> str:
    """Decode a query key or value once and re-encode it; most need neither (fast path)."""
    if _UNRESERVED_RE.match(raw):
        return raw
    return _aws_quote(unquote_to_bytes(raw), "")


def canonical_query(raw_query: str, presigned: bool) -> str:
    """The canonical query string: each pair decoded once ('+' stays '+'), re-encoded, sorted."""
    if not raw_query:
        return ""
    pairs = []
    for key, value in _split_query(raw_query):
        if presigned and key == _Q_SIGNATURE:
            continue
        pairs.append((_canonical_component(key), _canonical_component(value)))
    pairs.sort()
    return "&".join(f"{k}={v}" for k, v in pairs)


def _canonical_uris(raw_path: str) -> Iterator[str]:
    """Canonical URI candidates, cheapest first: as received, then re-encoded by the AWS rule.

    Clients disagree on which characters to escape (``!'()*`` and ``$&,:;=@`` especially);
    S3 does not normalise '.' segments or '//', so neither do we. The second and third
    candidates decode the path, interpreting non-ASCII characters as UTF-8 or as Latin-1
    (http.server-style request-line decoding), and re-encode every byte once.
    """
    path = raw_path or "/"
    yield path
    seen = {path}
    sources = [path.encode("utf-8", "surrogateescape")]
    try:
        latin = path.encode("latin-1")
    except UnicodeEncodeError:
        pass
    else:
        if latin != sources[0]:
            sources.append(latin)
    for source in sources:
        candidate = _aws_quote(unquote_to_bytes(source), "/")
        if candidate not in seen:
            seen.add(candidate)
            yield candidate


def _canonical_headers(req: RequestView, cred: Credential) -> str:
    lines = []
    headers = req.headers
    for name in cred.signed_headers:
        value = headers.get(name)
        if value is None:
            raise _mismatch(cred, "", "", f"signed header {name!r} is missing from the request")
        lines.append(f"{name}:{' '.join(value.split())}\n")
    return "".join(lines)


def _mismatch(cred: Credential, string_to_sign: str, canonical: str, why: str = "") -> S3Error:
    extra = {
        "AWSAccessKeyId": cred.access_key,
        "StringToSign": string_to_sign,
        "SignatureProvided": cred.signature,
        "CanonicalRequest": canonical,
    }
    if why:
        extra["Reason"] = why
    return S3Error(403, "SignatureDoesNotMatch", _MISMATCH_MESSAGE, extra)


def verify(req: RequestView, cred: Credential, secret: str) -> bytes:
    """Check the request signature against ``secret``; return the signing key on success.

    The key is returned because aws-chunked bodies need it to verify each chunk.
    """
    key = signing_key(secret, cred.date, cred.region, cred.service)
    tail = "\n".join(
        (
            canonical_query(req.raw_query, cred.presigned),
            _canonical_headers(req, cred),
            ";".join(cred.signed_headers),
            UNSIGNED_PAYLOAD if cred.presigned else cred.payload_hash,
        )
    )
    head = f"{ALGORITHM}\n{cred.amz_date}\n{cred.scope}\n"
    method = req.method.upper()
    expected = cred.signature.encode("ascii")
    first: tuple[str, str] | None = None
    for uri in _canonical_uris(req.raw_path):
        canonical = f"{method}\n{uri}\n{tail}"
        string_to_sign = head + hashlib.sha256(
            canonical.encode("utf-8", "surrogateescape")
        ).hexdigest()
        computed = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        if hmac.compare_digest(computed.encode("ascii"), expected):
            return key
        if first is None:
            first = (string_to_sign, canonical)
    assert first is not None
    raise _mismatch(cred, *first)

