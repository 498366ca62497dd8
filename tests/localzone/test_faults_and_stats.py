"""Fault injection (start-up options and the run-time admin API), request counters and the access log.

Faults are made deterministic with rate 1.0 (or switched on and off at run time around a single
request); every test that changes faults runs its own endpoint (``localzone_factory``).
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
import uuid

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, ResponseStreamingError

from tests.support import signing
from tests.support.localzone import DIRECTORY_BUCKET, GENERAL_BUCKET, SECRET_KEY, LocalZone

NO_RETRIES = {"total_max_attempts": 1, "mode": "standard"}
BUCKETS = ("--bucket", DIRECTORY_BUCKET, "--bucket", GENERAL_BUCKET)


def client(zone: LocalZone, **config):
    return zone.client(retries=NO_RETRIES, **config)


def failure(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response = excinfo.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def general_url(zone: LocalZone, key: str) -> str:
    return signing.object_url(zone.url, GENERAL_BUCKET, key)


def get(zone: LocalZone, key: str) -> signing.Reply:
    return signing.call("GET", general_url(zone, key), service="s3")


def session(zone: LocalZone, mode: str | None = None) -> dict:
    kwargs = {"SessionMode": mode} if mode else {}
    return client(zone).create_session(Bucket=DIRECTORY_BUCKET, **kwargs)["Credentials"]


def session_call(zone: LocalZone, creds: dict, method: str, key: str, body: bytes = b"") -> signing.Reply:
    return signing.call(method, signing.object_url(zone.url, DIRECTORY_BUCKET, key), body=body,
                        access_key=creds["AccessKeyId"], secret_key=creds["SecretAccessKey"], token=creds["SessionToken"])


def admin_post(zone: LocalZone, name: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{zone.url}/_localzone/{name}", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def zone(localzone_factory) -> LocalZone:
    """A fresh endpoint with no faults: counters and access log hold only this test's requests."""
    return localzone_factory(*BUCKETS)


# --- injected errors -------------------------------------------------------------------------------

def test_slowdown_fault_is_503_slow_down_with_retry_after(localzone_factory):
    zone = localzone_factory(*BUCKETS, "--fault-slowdown", "1")
    reply = get(zone, "any")
    assert (reply.status, reply.code) == (503, "SlowDown")
    assert reply.headers["retry-after"] == "1"
    assert zone.stats()["faults"] == {"slowdown": 1}


def test_internal_error_fault_is_500_internal_error(localzone_factory):
    zone = localzone_factory(*BUCKETS, "--fault-internal-error", "1")
    reply = get(zone, "any")
    assert (reply.status, reply.code) == (500, "InternalError")
    assert zone.stats()["faults"] == {"internal_error": 1}


def test_slowdown_reaches_boto3_as_a_client_error(localzone_factory):
    zone = localzone_factory(*BUCKETS, "--fault-slowdown", "1")
    with pytest.raises(ClientError) as excinfo:
        client(zone).put_object(Bucket=GENERAL_BUCKET, Key="k", Body=b"x")
    assert failure(excinfo) == (503, "SlowDown")


def test_faults_set_at_run_time_apply_to_the_next_request_only_while_on(zone):
    zone.set_faults(internal_error_rate=1.0)
    assert get(zone, "any").code == "InternalError"
    zone.set_faults(internal_error_rate=0.0)
    assert get(zone, "any").code == "NoSuchKey"


def test_admin_requests_are_never_faulted(localzone_factory):
    zone = localzone_factory(*BUCKETS, "--fault-slowdown", "1", "--fault-drop", "1")
    assert zone.admin("health")["ok"] is True
    assert zone.stats()["faults"] == {}


def test_dropped_connection_without_a_body_is_a_connection_error_not_a_response(localzone_factory):
    zone = localzone_factory(*BUCKETS, "--fault-drop", "1")
    with pytest.raises(ConnectionError):  # reset, or closed before any status line
        signing.call("PUT", general_url(zone, "k"), service="s3", body=b"x")
    assert zone.stats()["faults"] == {"drop": 1}


def test_dropped_connection_reaches_boto3_as_connection_closed(localzone_factory):
    zone = localzone_factory(*BUCKETS, "--fault-drop", "1")
    with pytest.raises(ConnectionClosedError):
        client(zone).put_object(Bucket=GENERAL_BUCKET, Key="k", Body=b"x")


def test_dropped_connection_cuts_a_body_short(zone):
    body = bytes(range(256)) * 400
    client(zone).put_object(Bucket=GENERAL_BUCKET, Key="big", Body=body)
    zone.set_faults(drop_rate=1.0)
    response = client(zone).get_object(Bucket=GENERAL_BUCKET, Key="big")
    assert response["ContentLength"] == len(body)
    with pytest.raises(ResponseStreamingError):
        response["Body"].read()


def test_premature_expiry_fault_is_expired_token_and_the_session_stays_dead(zone):
    creds = session(zone)
    assert session_call(zone, creds, "GET", "k").code == "NoSuchKey"  # the session works
    zone.set_faults(expire_token_rate=1.0)
    reply = session_call(zone, creds, "GET", "k")
    assert (reply.status, reply.code) == (400, "ExpiredToken")
    zone.set_faults(expire_token_rate=0.0)
    retry = session_call(zone, creds, "GET", "k")
    assert (retry.status, retry.code) == (400, "ExpiredToken")
    assert session_call(zone, session(zone), "GET", "k").code == "NoSuchKey"  # a new session works


def test_expire_token_fault_leaves_iam_signed_requests_alone(localzone_factory):
    zone = localzone_factory(*BUCKETS, "--fault-expire-token", "1")
    assert get(zone, "k").code == "NoSuchKey"
    session(zone)  # CreateSession itself is IAM-signed


def test_latency_delays_every_response_by_at_least_the_setting(zone):
    zone.set_faults(latency_ms=300)
    started = time.monotonic()
    assert get(zone, "k").code == "NoSuchKey"
    assert time.monotonic() - started >= 0.3


def test_latency_from_the_command_line(localzone_factory):
    zone = localzone_factory(*BUCKETS, "--latency-ms", "200", "--latency-jitter-ms", "50")
    assert zone.admin("faults")["latency_ms"] == 200
    started = time.monotonic()
    get(zone, "k")
    assert time.monotonic() - started >= 0.2


def test_outage_resets_s3_connections_until_switched_off(zone):
    zone.set_faults(outage=True)
    with pytest.raises(ConnectionError):
        get(zone, "k")
    assert zone.admin("health")["ok"] is True  # the admin API stays up
    zone.set_faults(outage=False)
    assert get(zone, "k").code == "NoSuchKey"
    assert zone.stats()["faults"] == {"outage": 1}


def _status_sequence(zone: LocalZone, n: int = 24) -> list[int]:
    return [signing.call("HEAD", general_url(zone, "k"), service="s3").status for _ in range(n)]


def test_fault_seed_makes_fault_decisions_repeatable(localzone_factory, tmp_path):
    args = (*BUCKETS, "--fault-slowdown", "0.5", "--fault-seed", "1234")
    first = _status_sequence(localzone_factory(*args, root=tmp_path / "one"))
    second = _status_sequence(localzone_factory(*args, root=tmp_path / "two"))
    assert first == second
    assert set(first) == {404, 503}  # both outcomes occur, so the equality says something


def test_faults_endpoint_reports_the_command_line_settings(localzone_factory):
    zone = localzone_factory(*BUCKETS, "--fault-slowdown", "0.25", "--fault-drop", "0.5", "--fault-expire-token", "0.125")
    faults = zone.admin("faults")
    assert (faults["slowdown_rate"], faults["drop_rate"], faults["expire_token_rate"], faults["outage"]) == (
        0.25, 0.5, 0.125, False)


@pytest.mark.parametrize("payload", [
    b'{"slowdown_rate": 1.5}', b'{"drop_rate": -0.1}', b'{"latency_ms": -5}', b'{"outage": "yes"}',
    b'{"outage": 1}', b'{"internal_error_rate": "0.5"}', b'{"internal_error_rate": true}', b'{"no_such_fault": 1}',
    b'{"latency_ms": NaN}', b'{"latency_ms": Infinity}', b"not json", b"[1, 2]", b'"text"',
])
def test_faults_endpoint_rejects_bad_values_with_400_and_changes_nothing(zone, payload):
    before = zone.admin("faults")
    status, answer = admin_post(zone, "faults", payload)
    assert status == 400 and answer["error"]
    assert zone.admin("faults") == before
    assert get(zone, "k").code == "NoSuchKey"  # the endpoint still serves


def test_a_rejected_fault_update_is_not_applied_in_part(zone):
    status, _ = admin_post(zone, "faults", b'{"slowdown_rate": 1.0, "no_such_fault": 1}')
    assert status == 400
    assert zone.admin("faults")["slowdown_rate"] == 0
    assert get(zone, "k").code == "NoSuchKey"


def test_unknown_admin_endpoint_is_404(zone):
    status, answer = admin_post(zone, "no-such-thing", b"{}")
    assert status == 404 and "no-such-thing" in answer["error"]


# --- counters --------------------------------------------------------------------------------------

def test_requests_are_counted_by_operation_name(zone):
    s3 = client(zone)
    s3.put_object(Bucket=DIRECTORY_BUCKET, Key="dir/a", Body=b"1")
    s3.get_object(Bucket=DIRECTORY_BUCKET, Key="dir/a")["Body"].read()
    s3.get_object(Bucket=DIRECTORY_BUCKET, Key="dir/a")["Body"].read()
    s3.list_objects_v2(Bucket=DIRECTORY_BUCKET, Prefix="dir/")
    stats = zone.stats()
    assert stats["requests"] == {"CreateSession": 1, "PutObject": 1, "GetObject": 2, "ListObjectsV2": 1}
    assert stats["sessions"] == {"ReadOnly": 0, "ReadWrite": 1}
    assert stats["mutating_requests"] == 1


def test_errors_are_counted_by_status_and_code(zone):
    get(zone, "missing")
    get(zone, "missing")
    stats = zone.stats()
    assert stats["statuses"] == {"404": 2}
    assert stats["errors"] == {"NoSuchKey": 2}


def test_bytes_in_and_out_grow_by_the_body_sizes(zone):
    body = b"z" * 12345
    zone.reset_stats()
    assert signing.call("PUT", general_url(zone, "sized"), service="s3", body=body).status == 200
    after_put = zone.stats()
    assert (after_put["bytes_in"], after_put["bytes_out"]) == (len(body), 0)
    assert get(zone, "sized").body == body
    after_get = zone.stats()
    assert (after_get["bytes_in"], after_get["bytes_out"]) == (len(body), len(body))


def test_reset_zeroes_the_counters(zone):
    s3 = client(zone)
    s3.put_object(Bucket=DIRECTORY_BUCKET, Key="r", Body=b"12345")
    s3.get_object(Bucket=DIRECTORY_BUCKET, Key="r")["Body"].read()
    get(zone, "missing")
    zone.reset_stats()
    stats = zone.stats()
    assert (stats["requests"], stats["statuses"], stats["errors"], stats["faults"]) == ({}, {}, {}, {})
    assert (stats["bytes_in"], stats["bytes_out"], stats["mutating_requests"]) == (0, 0, 0)
    assert stats["sessions"] == {"ReadOnly": 0, "ReadWrite": 0}


def test_reset_does_not_end_sessions(zone):
    creds = session(zone)
    zone.reset_stats()
    assert session_call(zone, creds, "GET", "k").code == "NoSuchKey"


# --- access log ------------------------------------------------------------------------------------

FIELDS = ("time", "client", "operation", "bucket", "key", "status", "error", "mode", "ms", "bytes_in", "bytes_out")


def log_rows(zone: LocalZone, count: int) -> list[dict[str, str]]:
    """The access log once it has ``count`` lines: a line is written when its response has gone out,
    so it may land a moment after the client has the response."""
    deadline = time.monotonic() + 5
    while len(rows := zone.access_log()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(len(row) == len(FIELDS) for row in rows), rows
    return [dict(zip(FIELDS, row)) for row in rows]


def summary(row: dict[str, str]) -> tuple[str, ...]:
    return row["operation"], row["bucket"], row["key"], row["status"], row["error"], row["mode"]


def test_one_access_log_line_per_request_with_operation_bucket_key_status_and_mode(zone):
    read_only = session(zone, "ReadOnly")  # 1: CreateSession (IAM)
    read_write = session(zone, "ReadWrite")  # 2
    assert session_call(zone, read_write, "PUT", "a b/c", b"hello").status == 200  # 3
    assert session_call(zone, read_only, "GET", "a b/c").body == b"hello"  # 4
    assert session_call(zone, read_only, "PUT", "x", b"no").code == "AccessDenied"  # 5
    assert get(zone, "missing").code == "NoSuchKey"  # 6
    zone.stats()  # admin requests are not logged
    # Lines are written as responses complete, so compare them in any order.
    assert sorted(summary(row) for row in log_rows(zone, 6)) == sorted([
        ("CreateSession", DIRECTORY_BUCKET, "-", "200", "-", "IAM"),
        ("CreateSession", DIRECTORY_BUCKET, "-", "200", "-", "IAM"),
        ("PutObject", DIRECTORY_BUCKET, "a%20b/c", "200", "-", "ReadWrite"),
        ("GetObject", DIRECTORY_BUCKET, "a%20b/c", "200", "-", "ReadOnly"),
        ("PutObject", DIRECTORY_BUCKET, "x", "403", "AccessDenied", "ReadOnly"),
        ("GetObject", GENERAL_BUCKET, "missing", "404", "NoSuchKey", "IAM"),
    ])


def test_access_log_counts_bytes_and_time(zone):
    assert signing.call("PUT", general_url(zone, "b"), service="s3", body=b"x" * 1000).status == 200
    get(zone, "b")
    put_row, get_row = sorted(log_rows(zone, 2), key=lambda row: row["operation"], reverse=True)
    assert (put_row["bytes_in"], put_row["bytes_out"]) == ("1000", "0")
    assert (get_row["bytes_in"], get_row["bytes_out"]) == ("0", "1000")
    assert float(put_row["ms"]) >= 0 and put_row["time"].endswith("Z") and put_row["client"] == "127.0.0.1"


def test_faulted_requests_appear_in_the_access_log_and_the_counters(zone):
    zone.set_faults(drop_rate=1.0)
    with pytest.raises(ConnectionError):
        signing.call("PUT", general_url(zone, "dropped"), service="s3", body=b"x")
    zone.set_faults(drop_rate=0.0, outage=True)
    with pytest.raises(ConnectionError):
        get(zone, "unreachable")
    zone.set_faults(outage=False)
    rows = log_rows(zone, 2)
    assert sorted((row["operation"], row["key"], row["status"]) for row in rows) == [
        ("GetObject", "unreachable", "0"), ("PutObject", "dropped", "0")]
    stats = zone.stats()
    assert stats["requests"] == {"PutObject": 1, "GetObject": 1}
    assert stats["mutating_requests"] == 1
    assert stats["faults"] == {"drop": 1, "outage": 1}


def test_no_secret_or_token_ever_reaches_the_access_log_or_stderr(localzone_factory, tmp_path):
    workdir = tmp_path / "secrets"
    workdir.mkdir()
    zone = localzone_factory(*BUCKETS, "--log-level", "DEBUG", workdir=workdir)
    creds = session(zone)
    key = f"s-{uuid.uuid4().hex[:6]}"
    session_call(zone, creds, "PUT", key, b"payload")
    session_call(zone, creds, "GET", key)
    signing.call("GET", signing.object_url(zone.url, DIRECTORY_BUCKET, key), access_key=creds["AccessKeyId"],
                 secret_key="wrong", token=creds["SessionToken"])  # a failed signature check
    url = client(zone).generate_presigned_url("get_object", Params={"Bucket": DIRECTORY_BUCKET, "Key": key})
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"payload"
    zone.expire_sessions()
    assert session_call(zone, creds, "GET", key).code == "ExpiredToken"
    assert zone.stop() == 0  # a clean stop writes the log lines of requests in progress
    texts = [zone.log_path.read_text(), (workdir / "localzone.stderr").read_text()]
    assert texts[0].count("\n") == 7  # CreateSession x2, PUT, GET x3 (one presigned), the ExpiredToken GET
    secrets = (creds["SessionToken"], creds["SecretAccessKey"], creds["SessionToken"][:32], SECRET_KEY)
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_access_log_to_stderr_holds_no_secret_or_token(localzone_factory, tmp_path):
    workdir = tmp_path / "stderr-log"
    workdir.mkdir()
    zone = localzone_factory(*BUCKETS, "--access-log", "-", workdir=workdir)
    creds = session(zone)
    session_call(zone, creds, "PUT", "k", b"v")
    zone.stop()
    stderr = (workdir / "localzone.stderr").read_text()
    assert "\tPutObject\t" in stderr
    assert creds["SessionToken"] not in stderr and creds["SecretAccessKey"] not in stderr


def test_plain_http_connection_survives_many_requests(zone):
    """Keep-alive: the counters see every request of one connection."""
    conn = http.client.HTTPConnection("127.0.0.1", zone.port, timeout=10)
    try:
        for _ in range(3):
            request = signing.sign("GET", general_url(zone, "k"), service="s3")
            conn.request("GET", f"/{GENERAL_BUCKET}/k", headers=dict(request.headers.items()))
            response = conn.getresponse()
            response.read()
            assert response.status == 404
    finally:
        conn.close()
    assert zone.stats()["requests"] == {"GetObject": 3}
