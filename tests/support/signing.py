"""Hand-made signed requests (botocore's signer as the reference) for error-path tests that a
well-behaved SDK would never send: expired or foreign tokens, wrong regions, skewed clocks."""

from __future__ import annotations

import contextlib
import datetime
import http.client
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock
from urllib.parse import quote, urlsplit

import botocore.auth
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.localzone import ACCESS_KEY, REGION, SECRET_KEY


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def code(self) -> str | None:
        """The S3 error code of an XML error body."""
        text = self.body.decode(errors="replace")
        if "<Code>" not in text:
            return None
        return text.split("<Code>", 1)[1].split("</Code>", 1)[0]


def sign(method: str, url: str, *, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
         token: str | None = None, service: str = "s3express", region: str = REGION,
         headers: dict[str, str] | None = None, body: bytes = b"", when: datetime.datetime | None = None) -> AWSRequest:
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    if token is not None:
        request.headers["x-amz-s3session-token"] = token
    with _clock(when):
        S3SigV4Auth(Credentials(access_key, secret_key), service, region).add_auth(request)
    return request


def presign(url: str, *, expires: int = 60, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY,
            service: str = "s3", region: str = REGION, when: datetime.datetime | None = None) -> str:
    request = AWSRequest(method="GET", url=url)
    with _clock(when):
        S3SigV4QueryAuth(Credentials(access_key, secret_key), service, region, expires=expires).add_auth(request)
    return request.url


@contextlib.contextmanager
def _clock(when: datetime.datetime | None) -> Iterator[None]:
    """Make botocore's signer believe it is ``when`` (naive UTC, or aware)."""
    if when is None:
        yield
        return
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    if hasattr(botocore.auth, "get_current_datetime"):  # botocore >= 1.36 reads the clock through this
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            yield
        return
    with mock.patch("botocore.auth.datetime") as fake:
        fake.datetime.now.return_value = when
        fake.datetime.utcnow.return_value = when
        fake.timezone = datetime.timezone
        yield


def send(request: AWSRequest) -> Reply:
    parts = urlsplit(request.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        body = request.body if isinstance(request.body, bytes) else (request.body or b"")
        conn.request(request.method, target, body=body, headers=dict(request.headers.items()))
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def call(method: str, url: str, **kwargs) -> Reply:
    return send(sign(method, url, **kwargs))


def object_url(base: str, bucket: str, key: str = "", query: str = "") -> str:
    url = f"{base}/{bucket}" + (f"/{quote(key, safe='/~')}" if key else "")
    return url + (f"?{query}" if query else "")
