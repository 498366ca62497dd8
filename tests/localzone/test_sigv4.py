"""SigV4 verification against botocore as an independent signer, and AWS's published vectors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from urllib.parse import quote, urlsplit

import boto3
import botocore.auth
import pytest
from botocore.auth import S3ExpressAuth, S3ExpressQueryAuth, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3xfs.localzone import sigv4
from s3xfs.localzone.errors import S3Error
from s3xfs.localzone.sigv4 import RequestView

FIXED = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.timezone.utc)
NOW = FIXED.timestamp()
AMZ_DATE = "20261122T120000Z"
ENDPOINT = "http://127.0.0.1:9000"
BUCKET = "photos--usw2-az1--x-s3"
AK, SECRET, TOKEN = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token/abc=="


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore stamps requests with the current time; pin it so the tests are repeatable."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: FIXED.replace(tzinfo=None))


def view_of(request: AWSRequest) -> RequestView:
    """What the server would see on the wire for a botocore request."""
    prepared = request.prepare()
    url = urlsplit(prepared.url)
    headers: dict[str, str] = {}
    for name, value in prepared.headers.items():
        name = name.lower()
        value = value.decode() if isinstance(value, bytes) else value
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    headers.setdefault("host", url.netloc)
    return RequestView(prepared.method, url.path, url.query, headers)


def signed(
    method: str = "GET",
    path: str = f"/{BUCKET}/key",
    query: str = "",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    service: str = "s3express",
    region: str = "us-west-2",
    token: str | None = TOKEN,
    presign: int | None = None,
) -> RequestView:
    url = f"{ENDPOINT}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    creds = Credentials(AK, SECRET, token)
    if presign is not None:
        if token is not None:
            S3ExpressQueryAuth(creds, service, region, identity_cache=None, expires=presign).add_auth(
                request
            )
        else:
            S3SigV4QueryAuth(creds, service, region, expires=presign).add_auth(request)
    elif token is not None:
        S3ExpressAuth(creds, service, region, identity_cache=None).add_auth(request)
    else:
        S3SigV4Auth(creds, service, region).add_auth(request)
    return view_of(request)


def check(view: RequestView, secret: str = SECRET) -> sigv4.Credential:
    cred = sigv4.parse_authorization(view)
    assert cred is not None
    sigv4.check_time(cred, NOW)
    key = sigv4.verify(view, cred, secret)
    assert key == sigv4.signing_key(secret, cred.date, cred.region, cred.service)
    return cred


def rejects(view: RequestView, code: str = "SignatureDoesNotMatch", secret: str = SECRET) -> S3Error:
    cred = sigv4.parse_authorization(view)
    assert cred is not None
    with pytest.raises(S3Error) as info:
        sigv4.verify(view, cred, secret)
    assert info.value.code == code
    return info.value


def parse_error(view: RequestView) -> S3Error:
    with pytest.raises(S3Error) as info:
        sigv4.parse_authorization(view)
    return info.value


def with_headers(view: RequestView, **changes: str | None) -> RequestView:
    headers = dict(view.headers)
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return dataclasses.replace(view, headers=headers)


# ---------------------------------------------------------------------------------------------
# Published vectors


def test_signing_key_matches_aws_documentation_example() -> None:
    # "Deriving the signing key", AWS General Reference (IAM example).
    key = sigv4.signing_key(
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam"
    )
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_signing_key_is_memoised() -> None:
    sigv4.signing_key.cache_clear()
    sigv4.signing_key("s", "20260101", "us-west-2", "s3express")
    sigv4.signing_key("s", "20260101", "us-west-2", "s3express")
    assert sigv4.signing_key.cache_info().hits == 1


def _doc_streaming_view(signed_headers: str, signature: str, extra: dict[str, str]) -> RequestView:
    headers = {
        "host": "s3.amazonaws.com",
        "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": "66560",
        "authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/"
        f"s3/aws4_request,SignedHeaders={signed_headers},Signature={signature}",
        **extra,
    }
    return RequestView("PUT", "/examplebucket/chunkObject.txt", "", headers)


@pytest.mark.parametrize(
    ("signed_headers", "signature", "extra"),
    [
        (
            "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
            "x-amz-decoded-content-length;x-amz-storage-class",
            "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
            {"content-length": "66824", "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"},
        ),
        (
            "content-encoding;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;"
            "x-amz-storage-class;x-amz-trailer",
            "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
            {
                "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
                "x-amz-trailer": "x-amz-checksum-crc32c",
            },
        ),
    ],
    ids=["chunked", "chunked-trailer"],
)
def test_aws_documented_streaming_seed_signatures(
    signed_headers: str, signature: str, extra: dict[str, str]
) -> None:
    view = _doc_streaming_view(signed_headers, signature, extra)
    cred = sigv4.parse_authorization(view)
    assert cred is not None and cred.scope == "20130524/us-east-1/s3/aws4_request"
    sigv4.check_time(cred, dt.datetime(2013, 5, 24, 0, 1, tzinfo=dt.timezone.utc).timestamp())
    sigv4.verify(view, cred, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    rejects(
        with_headers(view, x_amz_storage_class="STANDARD"),
        secret="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    )


# ---------------------------------------------------------------------------------------------
# Header auth signed by botocore


def test_session_request_verifies_and_carries_token() -> None:
    view = signed("PUT", f"/{BUCKET}/dir/file.txt", "x-id=PutObject", body=b"hello")
    cred = check(view)
    assert cred.access_key == AK
    assert cred.service == "s3express" and cred.region == "us-west-2" and cred.date == "20261122"
    assert cred.scope == "20261122/us-west-2/s3express/aws4_request"
    assert cred.session_token == TOKEN
    assert "x-amz-s3session-token" in cred.signed_headers
    assert "x-amz-security-token" not in view.headers
    assert cred.payload_hash == hashlib.sha256(b"hello").hexdigest()
    assert not cred.presigned and cred.expires is None and cred.amz_date == AMZ_DATE


def test_plain_s3_request_without_token() -> None:
    cred = check(signed(service="s3", token=None))
    assert cred.service == "s3" and cred.session_token is None


def test_create_session_request() -> None:
    for query in ("session", "session="):
        view = signed("GET", f"/{BUCKET}", query, {"x-amz-create-session-mode": "ReadOnly"}, token=None)
        check(view)
        # '?session' and '?session=' are the same canonical query
        other = "session=" if query == "session" else "session"
        check(dataclasses.replace(view, raw_query=other))


MINIMAL_SAFE = "/~!'()*$&,:;=@+"

KEYS = [
    "plain.txt",
    "with space/and  two",
    "unicodé/日本語/🙂",
    "plus+sign",
    "equals=sign&amp",
    "tilde~name",
    "bang!",
    "quote'name",
    "paren(1)*",
    "percent%20literal",
    "question?mark#hash",
    "semi;colon:at@dollar$comma,",
    "dir//double/./dot/../x",
    "trailing/",
]


@pytest.mark.parametrize("key", KEYS)
def test_keys_escaped_like_botocore(key: str) -> None:
    check(signed("PUT", f"/{BUCKET}/{quote(key, safe='/~')}", body=b"x"))


@pytest.mark.parametrize("key", KEYS)
def test_keys_escaped_minimally(key: str) -> None:
    # Some clients leave sub-delims raw on the wire and sign exactly what they send.
    path = f"/{BUCKET}/{quote(key, safe=MINIMAL_SAFE)}"
    check(signed("GET", path))


@pytest.mark.parametrize("key", KEYS)
def test_sent_raw_but_signed_escaped(key: str) -> None:
    # The client escaped everything when signing but sent sub-delims raw: candidate (b).
    view = signed("GET", f"/{BUCKET}/{quote(key, safe='/~')}")
    sent = f"/{BUCKET}/{quote(key, safe=MINIMAL_SAFE)}"
    check(dataclasses.replace(view, raw_path=sent))


def test_path_bytes_decoded_as_latin1_by_the_server() -> None:
    # http.server decodes the request line as ISO-8859-1; a client that sent raw UTF-8 but
    # signed the escaped form must still verify.
    view = signed("GET", f"/{BUCKET}/{quote('café')}")
    raw = f"/{BUCKET}/café".encode().decode("latin-1")
    check(dataclasses.replace(view, raw_path=raw))


def test_path_is_not_normalised() -> None:
    view = signed("GET", f"/{BUCKET}/a//b/./c/../d")
    check(view)
    rejects(dataclasses.replace(view, raw_path=f"/{BUCKET}/a/b/d"))


QUERIES = [
    "list-type=2&prefix=dir%2F&delimiter=%2F&max-keys=1000",
    "prefix=a%20b%2Bc%3Dd%26e&list-type=2",
    "continuation-token=abc%2Fdef%2B%3D%3D&list-type=2",
    "uploads",
    "partNumber=3&uploadId=x~y_z.-",
    "response-content-disposition=attachment%3B%20filename%3D%22%C3%A9t%C3%A9.txt%22",
    "b=2&a=1&a=0",
]


@pytest.mark.parametrize("query", QUERIES)
def test_query_strings(query: str) -> None:
    view = signed("GET", f"/{BUCKET}", query)
    check(view)
    rejects(dataclasses.replace(view, raw_query=query + "&extra=1"))


def test_query_plus_is_a_literal_plus() -> None:
    view = signed("GET", f"/{BUCKET}", "prefix=a%2Bb")
    check(dataclasses.replace(view, raw_query="prefix=a+b"))  # '+' means '+', not ' '
    rejects(dataclasses.replace(view, raw_query="prefix=a%20b"))


def test_query_encoding_variants_are_equivalent() -> None:
    # S3 decodes and re-encodes each pair, so the spelling on the wire does not matter...
    view = signed("GET", f"/{BUCKET}", "prefix=a~b%2Fc")
    check(dataclasses.replace(view, raw_query="prefix=a%7Eb%2fc"))
    # ...and a client that signs a non-canonical spelling literally is wrong (as with S3).
    rejects(signed("GET", f"/{BUCKET}", "prefix=a%7Eb"))


def test_header_value_whitespace_is_canonicalised() -> None:
    view = signed("PUT", f"/{BUCKET}/k", headers={"x-amz-meta-note": "a  b"})
    check(with_headers(view, x_amz_meta_note="  a   b  "))
    rejects(with_headers(view, x_amz_meta_note="a b c"))


# --- tampering: every signed element matters


@pytest.fixture
def good() -> RequestView:
    return signed(
        "PUT",
        f"/{BUCKET}/dir/obj",
        "x-id=PutObject",
        {"content-type": "text/plain", "x-amz-meta-a": "1"},
        body=b"data",
    )


def test_good_request_verifies(good: RequestView) -> None:
    check(good)


def test_tampered_method(good: RequestView) -> None:
    rejects(dataclasses.replace(good, method="POST"))


def test_tampered_path(good: RequestView) -> None:
    rejects(dataclasses.replace(good, raw_path=f"/{BUCKET}/dir/obj2"))


def test_tampered_query(good: RequestView) -> None:
    rejects(dataclasses.replace(good, raw_query="x-id=GetObject"))


@pytest.mark.parametrize("header", ["content-type", "x-amz-meta-a", "host", "x-amz-date",
                                    "x-amz-s3session-token", "x-amz-content-sha256"])
def test_tampered_signed_header(good: RequestView, header: str) -> None:
    value = good.headers[header]
    replacement = (
        hashlib.sha256(b"other").hexdigest() if header == "x-amz-content-sha256"
        else "20261122T120001Z" if header == "x-amz-date" else value + "x"
    )
    rejects(with_headers(good, **{header.replace("-", "_"): replacement}))


def test_missing_signed_header(good: RequestView) -> None:
    error = rejects(with_headers(good, x_amz_meta_a=None))
    assert error.status == 403


def test_unsigned_header_may_change(good: RequestView) -> None:
    check(with_headers(good, user_agent="something else", x_amz_meta_unsigned="yes"))


def test_wrong_secret(good: RequestView) -> None:
    rejects(good, secret=SECRET + "x")


@pytest.mark.parametrize(
    ("old", "new"),
    [("/us-west-2/", "/us-east-1/"), ("/s3express/", "/s3/"), (f"{AK}/", "OTHERKEY/")],
    ids=["region", "service", "access-key-irrelevant-to-hmac-but-secret-differs"],
)
def test_tampered_scope(good: RequestView, old: str, new: str) -> None:
    auth = good.headers["authorization"]
    assert old in auth
    tampered = with_headers(good, authorization=auth.replace(old, new))
    if old.startswith(AK):
        # The access key is not part of the HMAC input: the server must look up the secret
        # for the claimed key, which then differs.
        cred = sigv4.parse_authorization(tampered)
        assert cred is not None and cred.access_key == "OTHERKEY"
        rejects(tampered, secret="the-other-keys-secret")
    else:
        rejects(tampered)


def test_tampered_signature(good: RequestView) -> None:
    auth = good.headers["authorization"]
    sig = auth.rsplit("Signature=", 1)[1]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    error = rejects(with_headers(good, authorization=auth.replace(sig, flipped)))
    assert error.status == 403
    assert error.message.startswith("The request signature we calculated does not match")
    assert error.extra["SignatureProvided"] == flipped
    assert error.extra["AWSAccessKeyId"] == AK
    assert error.extra["StringToSign"].startswith(f"AWS4-HMAC-SHA256\n{AMZ_DATE}\n")
    assert error.extra["CanonicalRequest"].startswith(f"PUT\n/{BUCKET}/dir/obj\nx-id=PutObject\n")


def test_authorization_header_tolerates_spacing_and_order(good: RequestView) -> None:
    auth = good.headers["authorization"]
    algorithm, rest = auth.split(" ", 1)
    parts = [p.strip() for p in rest.split(",")]
    reordered = f"{algorithm}   {parts[2]} ,{parts[0]},   {parts[1]}  "
    check(with_headers(good, authorization=reordered))


# --- presigned


def test_presigned_get_plain_s3() -> None:
    view = signed("GET", f"/{BUCKET}/k%20ey", "response-content-type=text%2Fplain",
                  service="s3", token=None, presign=600)
    cred = check(view)
    assert cred.presigned and cred.expires == 600 and cred.payload_hash == "UNSIGNED-PAYLOAD"
    assert cred.session_token is None and "authorization" not in view.headers
    rejects(dataclasses.replace(view, raw_query=view.raw_query.replace("text%2Fplain", "text%2Fhtml")))


def test_presigned_get_with_session_token() -> None:
    view = signed("GET", f"/{BUCKET}/obj", presign=300)
    assert "X-Amz-S3session-Token=" in view.raw_query
    cred = check(view)
    assert cred.session_token == TOKEN and cred.service == "s3express"
    tampered = view.raw_query.replace("X-Amz-Expires=300", "X-Amz-Expires=600")
    rejects(dataclasses.replace(view, raw_query=tampered))


def test_presigned_signature_position_is_irrelevant() -> None:
    view = signed("GET", f"/{BUCKET}/obj", presign=300)
    pairs = view.raw_query.split("&")
    check(dataclasses.replace(view, raw_query="&".join(reversed(pairs))))


# --- a real boto3 client, end to end through CreateSession


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, *args: object, **kwargs: object):
        yield self._body


def test_boto3_client_session_flow() -> None:
    """boto3 creates a session itself and signs data-plane calls with it; all must verify."""
    secrets = {AK: SECRET, "SESSIONAK": "session/secret+key"}
    seen: list[sigv4.Credential] = []

    def answer(request, **kwargs):
        url = urlsplit(request.url)
        headers = {}
        for name, value in request.headers.items():
            headers[name.lower()] = value.decode() if isinstance(value, bytes) else value
        headers.setdefault("host", url.netloc)
        view = RequestView(request.method, url.path, url.query, headers)
        cred = sigv4.parse_authorization(view)
        assert cred is not None
        sigv4.check_time(cred, NOW)
        sigv4.verify(view, cred, secrets[cred.access_key])
        seen.append(cred)
        body = b""
        if url.query in ("session", "session="):
            body = (
                b'<CreateSessionResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Credentials>'
                b"<SessionToken>TOKEN+/=</SessionToken><SecretAccessKey>session/secret+key"
                b"</SecretAccessKey><AccessKeyId>SESSIONAK</AccessKeyId>"
                b"<Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></CreateSessionResult>"
            )
        elif "list-type=2" in url.query:
            body = (
                b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                b"<Name>b</Name><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys>"
                b"<IsTruncated>false</IsTruncated></ListBucketResult>"
            )
        return AWSResponse(request.url, 200, {"content-length": str(len(body))}, _Raw(body))

    client = boto3.client(
        "s3",
        region_name="us-west-2",
        endpoint_url=ENDPOINT,
        aws_access_key_id=AK,
        aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1}),
    )
    client.meta.events.register("before-send.s3", answer)
    for key in ["a b/c+d=e", "ü/日本/x!'()*~", "q?x#y%z"]:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"data" * 10)
        client.get_object(Bucket=BUCKET, Key=key)
    client.list_objects_v2(Bucket=BUCKET, Prefix="dir with+plus/", Delimiter="/")
    assert seen[0].access_key == AK and seen[0].session_token is None
    assert all(c.access_key == "SESSIONAK" and c.session_token == "TOKEN+/=" for c in seen[1:])
    assert all(c.service == "s3express" for c in seen)
    assert len(seen) == 8


# --- property: whatever botocore signs verifies, and a flipped bit does not

_key_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=_key_text, prefix=_key_text, meta=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20))
def test_property_botocore_signed_requests_verify(key: str, prefix: str, meta: str) -> None:
    query = f"list-type=2&prefix={quote(prefix, safe='-_.~')}"
    view = signed("GET", f"/{BUCKET}/{quote(key, safe='/~')}", query, {"x-amz-meta-m": meta})
    check(view)
    rejects(dataclasses.replace(view, raw_path=view.raw_path + "x"))


# ---------------------------------------------------------------------------------------------
# Parse errors


def _view(headers: dict[str, str], query: str = "", path: str = f"/{BUCKET}/k") -> RequestView:
    base = {"host": "127.0.0.1:9000"}
    base.update(headers)
    return RequestView("GET", path, query, base)


def test_anonymous_is_none() -> None:
    assert sigv4.parse_authorization(_view({})) is None
    assert sigv4.parse_authorization(_view({}, "list-type=2&X-Amz-Meta=1")) is None


def test_sigv2_header_is_unsupported() -> None:
    error = parse_error(_view({"authorization": "AWS AKIDEXAMPLE:c2lnbmF0dXJl"}))
    assert (error.status, error.code) == (400, "InvalidRequest")
    assert error.message == (
        "The authorization mechanism you have provided is not supported. "
        "Please use AWS4-HMAC-SHA256."
    )


def test_sigv2_query_is_unsupported() -> None:
    error = parse_error(_view({}, "AWSAccessKeyId=AK&Signature=abc&Expires=1700000000"))
    assert (error.status, error.code) == (400, "InvalidRequest")
    assert "AWS4-HMAC-SHA256" in error.message


def test_unknown_algorithm() -> None:
    error = parse_error(_view({"authorization": "Bearer abc"}))
    assert (error.status, error.code) == (400, "InvalidArgument")


VALID_AUTH = (
    "AWS4-HMAC-SHA256 Credential=AK/20261122/us-west-2/s3express/aws4_request, "
    "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=" + "a" * 64
)
VALID_HEADERS = {
    "authorization": VALID_AUTH,
    "x-amz-date": AMZ_DATE,
    "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
}


def test_valid_header_parses() -> None:
    cred = sigv4.parse_authorization(_view(VALID_HEADERS))
    assert cred == sigv4.Credential(
        access_key="AK", date="20261122", region="us-west-2", service="s3express",
        signed_headers=("host", "x-amz-content-sha256", "x-amz-date"), signature="a" * 64,
        amz_date=AMZ_DATE, presigned=False, expires=None, payload_hash="UNSIGNED-PAYLOAD",
        session_token=None,
    )


@pytest.mark.parametrize(
    "auth",
    [
        VALID_AUTH.replace("/aws4_request", "/aws5_request"),
        VALID_AUTH.replace("AK/20261122/", "AK/"),
        VALID_AUTH.replace("AK/20261122/", "AK/extra/20261122/"),
        VALID_AUTH.replace("20261122", "20261340"),
        VALID_AUTH.replace("20261122", "2026112"),
        VALID_AUTH.replace("SignedHeaders=host;", "SignedHeaders="),  # host not signed
        VALID_AUTH.replace(", Signature=" + "a" * 64, ""),
        VALID_AUTH.replace("Signature=" + "a" * 64, "Signature=xyz"),
        VALID_AUTH + ", Extra=1",
        "AWS4-HMAC-SHA256 garbage",
        "AWS4-HMAC-SHA256",
    ],
    ids=["terminator", "scope-too-short", "scope-too-long", "bad-date", "short-date",
         "host-unsigned", "no-signature", "bad-signature-syntax", "extra-part", "garbage", "empty"],
)
def test_malformed_authorization_header(auth: str) -> None:
    error = parse_error(_view({**VALID_HEADERS, "authorization": auth}))
    assert (error.status, error.code) == (400, "AuthorizationHeaderMalformed")


def test_host_unsigned_message_says_so() -> None:
    auth = VALID_AUTH.replace("SignedHeaders=host;", "SignedHeaders=")
    assert "host" in parse_error(_view({**VALID_HEADERS, "authorization": auth})).message


@pytest.mark.parametrize("date", [None, "", "2026-11-22T12:00:00Z", "20261122T250000Z"])
def test_missing_or_bad_amz_date(date: str | None) -> None:
    headers = dict(VALID_HEADERS)
    if date is None:
        del headers["x-amz-date"]
    else:
        headers["x-amz-date"] = date
    error = parse_error(_view(headers))
    assert (error.status, error.code) == (403, "AccessDenied")
    assert error.message == "AWS authentication requires a valid Date or x-amz-date header"


def test_missing_content_sha256() -> None:
    headers = dict(VALID_HEADERS)
    del headers["x-amz-content-sha256"]
    error = parse_error(_view(headers))
    assert (error.status, error.code) == (400, "InvalidRequest")
    assert error.message == "Missing required header for this request: x-amz-content-sha256"


@pytest.mark.parametrize(
    "value",
    ["", "abc", "A" * 64, "g" * 64, "a" * 63, "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD", "unsigned-payload"],
)
def test_bad_payload_hash(value: str) -> None:
    error = parse_error(_view({**VALID_HEADERS, "x-amz-content-sha256": value}))
    assert (error.status, error.code) == (400, "InvalidArgument")


@pytest.mark.parametrize(
    "value",
    ["UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
     "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER", hashlib.sha256(b"").hexdigest()],
)
def test_good_payload_hash(value: str) -> None:
    cred = sigv4.parse_authorization(_view({**VALID_HEADERS, "x-amz-content-sha256": value}))
    assert cred is not None and cred.payload_hash == value


def test_header_and_query_auth_together() -> None:
    query = signed("GET", presign=60).raw_query
    error = parse_error(_view(VALID_HEADERS, query))
    assert (error.status, error.code) == (400, "InvalidArgument")


def _presigned_query(**changes: str | None) -> str:
    params = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": "AK%2F20261122%2Fus-west-2%2Fs3express%2Faws4_request",
        "X-Amz-Date": AMZ_DATE,
        "X-Amz-Expires": "300",
        "X-Amz-SignedHeaders": "host",
        "X-Amz-Signature": "b" * 64,
    }
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            params.pop(name)
        else:
            params[name] = value
    return "&".join(f"{k}={v}" for k, v in params.items())


def test_valid_presigned_parses() -> None:
    cred = sigv4.parse_authorization(_view({}, _presigned_query()))
    assert cred is not None and cred.presigned and cred.expires == 300
    assert cred.scope == "20261122/us-west-2/s3express/aws4_request"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"X_Amz_Expires": "604801"}, "X-Amz-Expires must be less than a week (in seconds) that is 604800"),
        ({"X_Amz_Expires": "0"}, None),
        ({"X_Amz_Expires": "-5"}, None),
        ({"X_Amz_Expires": "abc"}, None),
        ({"X_Amz_Expires": None}, None),
        ({"X_Amz_Signature": None}, None),
        ({"X_Amz_Credential": "AK%2F20261122%2Fus-west-2%2Fs3express"}, None),
        ({"X_Amz_Credential": "AK%2F20261122%2Fus-west-2%2Fs3express%2Faws4"}, None),
        ({"X_Amz_SignedHeaders": "x-amz-date"}, None),
        ({"X_Amz_Algorithm": "AWS4-HMAC-SHA1"}, None),
    ],
)
def test_malformed_presigned(changes: dict[str, str | None], message: str | None) -> None:
    error = parse_error(_view({}, _presigned_query(**changes)))
    assert (error.status, error.code) == (400, "AuthorizationQueryParametersError")
    if message:
        assert error.message == message


def test_presigned_expires_at_limit_is_fine() -> None:
    cred = sigv4.parse_authorization(_view({}, _presigned_query(X_Amz_Expires="604800")))
    assert cred is not None and cred.expires == 604800


def test_presigned_missing_date() -> None:
    error = parse_error(_view({}, _presigned_query(X_Amz_Date=None)))
    assert (error.status, error.code) == (403, "AccessDenied")


# ---------------------------------------------------------------------------------------------
# Time


def _cred(**changes: object) -> sigv4.Credential:
    cred = sigv4.parse_authorization(_view(VALID_HEADERS))
    assert cred is not None
    return dataclasses.replace(cred, **changes)


@pytest.mark.parametrize("offset", [0, 900, -900, 899.5])
def test_header_time_within_skew(offset: float) -> None:
    sigv4.check_time(_cred(), NOW + offset)


@pytest.mark.parametrize("offset", [901, -901, 86400])
def test_header_time_too_skewed(offset: float) -> None:
    with pytest.raises(S3Error) as info:
        sigv4.check_time(_cred(), NOW + offset)
    error = info.value
    assert (error.status, error.code) == (403, "RequestTimeTooSkewed")
    assert error.message == "The difference between the request time and the current time is too large."
    assert error.extra["RequestTime"] == AMZ_DATE
    assert "ServerTime" in error.extra


def test_presigned_time_window() -> None:
    cred = _cred(presigned=True, expires=300, payload_hash="UNSIGNED-PAYLOAD")
    sigv4.check_time(cred, NOW + 300)
    sigv4.check_time(cred, NOW - 900)  # clock skew tolerated
    with pytest.raises(S3Error) as info:
        sigv4.check_time(cred, NOW + 301)
    assert (info.value.status, info.value.code, info.value.message) == (403, "AccessDenied", "Request has expired")
    assert info.value.extra["Expires"] == "2026-11-22T12:05:00Z"
    assert "ServerTime" in info.value.extra
    with pytest.raises(S3Error) as info:
        sigv4.check_time(cred, NOW - 901)
    assert (info.value.code, info.value.message) == ("AccessDenied", "Request is not valid yet")


def test_presigned_long_lived_is_not_skew_checked() -> None:
    cred = _cred(presigned=True, expires=604800)
    sigv4.check_time(cred, NOW + 600000)


def test_scope_date_must_match_request_date() -> None:
    with pytest.raises(S3Error) as info:
        sigv4.check_time(_cred(date="20261121"), NOW)
    assert (info.value.status, info.value.code) == (400, "AuthorizationHeaderMalformed")
    assert "20261121" in info.value.message
    with pytest.raises(S3Error) as info:
        sigv4.check_time(_cred(date="20261121", presigned=True, expires=60), NOW)
    assert info.value.code == "AuthorizationQueryParametersError"


def test_verify_is_cheap(good: RequestView) -> None:
    """A loose guard (real figure is a few microseconds): verify runs on every request."""
    import timeit

    cred = sigv4.parse_authorization(good)
    assert cred is not None
    per_call = min(timeit.repeat(lambda: sigv4.verify(good, cred, SECRET), number=200, repeat=3)) / 200
    assert per_call < 0.001
