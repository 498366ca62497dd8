"""``s3xfs-localzone`` as a command: banner, --help, option errors, signals, persistence, crashes."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.support import signing
from tests.support.localzone import DIRECTORY_BUCKET, GENERAL_BUCKET, LocalZone

COMMAND = [sys.executable, "-m", "s3xfs.localzone"]
NO_RETRIES = {"total_max_attempts": 1, "mode": "standard"}
MiB = 1 << 20


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run the command to completion (for invocations that must exit at once)."""
    return subprocess.run([*COMMAND, "--access-log", "off", *args], capture_output=True, text=True, timeout=timeout)


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("s3xfs-localzone: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.stderr
    assert "listening on" not in result.stdout  # it never started


# --- banner and help -------------------------------------------------------------------------------

def test_first_stdout_line_is_exactly_the_listening_line(localzone_factory):
    zone = localzone_factory()
    match = re.fullmatch(r"s3xfs-localzone listening on http://127\.0\.0\.1:(\d+)", zone.banner[0])
    assert match, zone.banner[0]
    with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=5):
        pass
    assert zone.admin("health")["ok"] is True


def test_help_exits_0_and_lists_the_options():
    result = run("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: s3xfs-localzone")
    for option in ("--root", "--bucket", "--users", "--session-ttl", "--fault-drop", "--fault-seed", "--access-log"):
        assert option in result.stdout
    assert result.stderr == ""


# --- bad options -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "fragments"), [
    (["--port", "abc"], ["--port", "abc"]),
    (["--port", "70000"], ["--port", "70000"]),
    (["--bucket", "Bad_Name"], ["--bucket", "Bad_Name"]),
    (["--fault-drop", "2"], ["--fault-drop", "probability"]),
    (["--fault-slowdown", "-0.5"], ["--fault-slowdown"]),
    (["--session-ttl", "0"], ["--session-ttl", "greater than 0"]),
    (["--session-ttl", "nan"], ["--session-ttl", "nan"]),
    (["--latency-ms", "inf"], ["--latency-ms", "inf"]),
    (["--latency-ms", "-1"], ["--latency-ms"]),
    (["--fault-seed", "x"], ["--fault-seed"]),
    (["--access-key", "AKIAONLYTHEKEY000000"], ["--access-key", "--secret-key"]),
    (["--secret-key", "only-the-secret"], ["--access-key", "--secret-key"]),
    (["--no-such-option"], ["--no-such-option"]),
])
def test_bad_option_values_exit_2_with_one_line(args, fragments):
    assert_usage_error(run(*args), *fragments)


@pytest.mark.parametrize(("content", "fragment"), [
    (b"{not json", "not valid JSON"),
    (b'{"principals": []}', "principals"),
    (b'{"principals": [{"name": "x", "access_key": "AKIAX"}]}', "secret_key"),
    (b'{"principals": [{"access_key": "AKIAX", "secret_key": "s", "buckets": {"*": ["WriteOnly"]}}]}', "ReadOnly"),
    (b'{"principals": [{"access_key": "AKIAX", "secret_key": "s"}, {"access_key": "AKIAX", "secret_key": "t"}]}', "twice"),
    (b"\xff\xfe\x00garbage", "UTF-8"),
])
def test_malformed_users_file_exits_2_naming_the_file(tmp_path, content, fragment):
    users = tmp_path / "users.json"
    users.write_bytes(content)
    assert_usage_error(run("--users", str(users)), str(users), fragment)


def test_missing_users_file_exits_2(tmp_path):
    missing = tmp_path / "nope.json"
    assert_usage_error(run("--users", str(missing)), str(missing))


def test_users_file_and_access_key_together_exit_2(tmp_path):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"principals": [{"access_key": "AKIAX", "secret_key": "s"}]}))
    assert_usage_error(run("--users", str(users), "--access-key", "AKIAY", "--secret-key", "t"), "--users")


def test_unwritable_access_log_exits_2(tmp_path):
    result = subprocess.run([*COMMAND, "--root", str(tmp_path / "root"), "--access-log", str(tmp_path / "no" / "dir" / "log")],
                            capture_output=True, text=True, timeout=20)
    assert_usage_error(result, "No such file or directory")


def test_port_in_use_exits_2(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run("--root", str(tmp_path / "root"), "--port", str(port))
    assert_usage_error(result, f"cannot listen on 127.0.0.1:{port}")


def test_root_in_use_by_a_running_endpoint_exits_2(localzone_factory, tmp_path):
    root = tmp_path / "shared-root"
    localzone_factory(root=root)
    assert_usage_error(run("--root", str(root)), str(root))


def test_a_failed_start_leaves_no_temporary_root(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run([*COMMAND, "--access-log", "off", "--port", str(port)], capture_output=True, text=True,
                                timeout=20, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert result.returncode == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("s3xfs-localzone-")] == []


# --- signals and the temporary root --------------------------------------------------------------

def _start_without_root(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """Start with no --root (a temporary one, under tmp_path) and read the banner up to its root line."""
    proc = subprocess.Popen([*COMMAND, "--access-log", "off", "--bucket", GENERAL_BUCKET], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.stdout is not None
    watchdog = threading.Timer(30, proc.kill)  # a hung start must not hang the test
    watchdog.start()
    try:
        for line in proc.stdout:
            if line.startswith("root: "):
                assert line.rstrip("\n").endswith(" (temporary)"), line
                return proc, Path(line[len("root: "):].rsplit(" (temporary)", 1)[0])
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        watchdog.cancel()
    proc.kill()
    proc.wait()
    raise AssertionError(f"no root line on stdout; stderr: {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_0_and_removes_the_temporary_root(tmp_path, sig):
    proc, root = _start_without_root(tmp_path)
    try:
        assert root.is_dir() and root.parent == tmp_path
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    assert not root.exists()


def test_sigterm_keeps_an_explicit_root(localzone_factory, tmp_path):
    root = tmp_path / "kept"
    zone = localzone_factory(root=root)
    assert zone.stop() == 0
    assert (root / "localzone.sqlite3").exists()


def test_sigterm_lets_a_request_in_progress_finish(localzone_factory):
    zone = localzone_factory("--bucket", GENERAL_BUCKET, "--latency-ms", "800")
    replies: list[signing.Reply] = []
    worker = threading.Thread(target=lambda: replies.append(
        signing.call("GET", signing.object_url(zone.url, GENERAL_BUCKET, "k"), service="s3")))
    worker.start()
    time.sleep(0.3)  # received, and held by the 800 ms latency
    assert zone.stop() == 0
    worker.join(timeout=10)
    assert [(r.status, r.code) for r in replies] == [(404, "NoSuchKey")]
    assert [row[2] for row in zone.access_log()] == ["GetObject"]


# --- persistence -----------------------------------------------------------------------------------

def test_root_keeps_buckets_and_objects_across_a_restart(localzone_factory, tmp_path):
    root = tmp_path / "persistent"
    first = localzone_factory("--bucket", DIRECTORY_BUCKET, "--bucket", GENERAL_BUCKET, root=root)
    s3 = first.client(retries=NO_RETRIES)
    s3.put_object(Bucket=DIRECTORY_BUCKET, Key="dir/kept", Body=b"directory object")
    s3.put_object(Bucket=GENERAL_BUCKET, Key="kept", Body=b"general object")
    assert first.stop() == 0
    second = localzone_factory(root=root)  # no --bucket: the buckets come from the root
    s3 = second.client(retries=NO_RETRIES)
    assert s3.get_object(Bucket=DIRECTORY_BUCKET, Key="dir/kept")["Body"].read() == b"directory object"
    assert s3.get_object(Bucket=GENERAL_BUCKET, Key="kept")["Body"].read() == b"general object"


def test_sessions_do_not_survive_a_restart(localzone_factory, tmp_path):
    root = tmp_path / "sessions"
    first = localzone_factory("--bucket", DIRECTORY_BUCKET, root=root)
    creds = first.client(retries=NO_RETRIES).create_session(Bucket=DIRECTORY_BUCKET)["Credentials"]
    first.stop()
    second = localzone_factory(root=root)
    reply = signing.call("GET", signing.object_url(second.url, DIRECTORY_BUCKET, "k"), access_key=creds["AccessKeyId"],
                         secret_key=creds["SecretAccessKey"], token=creds["SessionToken"])
    assert (reply.status, reply.code) == (400, "InvalidToken")


# --- crash during an upload ------------------------------------------------------------------------

def _kill_during_upload(zone: LocalZone, key: str, size: int = 32 * MiB) -> None:
    """Send the headers and the first few MiB of a PUT, wait until the endpoint is staging it, kill -9."""
    body = bytes(size)
    request = signing.sign("PUT", signing.object_url(zone.url, GENERAL_BUCKET, key), service="s3", body=body)
    conn = http.client.HTTPConnection("127.0.0.1", zone.port, timeout=10)
    try:
        conn.putrequest("PUT", f"/{GENERAL_BUCKET}/{key}", skip_accept_encoding=True)
        for name, value in request.headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        conn.send(body[: 4 * MiB])
        staging = zone.root / "tmp"
        deadline = time.monotonic() + 10
        while not any(p.stat().st_size > 0 for p in staging.iterdir()):
            assert time.monotonic() < deadline, "the endpoint never started staging the upload"
            time.sleep(0.01)
        zone.kill()
        assert zone.proc is not None and zone.proc.returncode == -signal.SIGKILL
    finally:
        conn.close()


def test_kill_9_during_an_upload_leaves_no_partial_object(localzone_factory, tmp_path):
    root = tmp_path / "crash"
    _kill_during_upload(localzone_factory("--bucket", GENERAL_BUCKET, root=root), "big")
    zone = localzone_factory(root=root)
    s3 = zone.client(retries=NO_RETRIES)
    with pytest.raises(ClientError) as excinfo:
        s3.head_object(Bucket=GENERAL_BUCKET, Key="big")
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert s3.list_objects_v2(Bucket=GENERAL_BUCKET)["KeyCount"] == 0
    assert list((root / "tmp").iterdir()) == []  # the staged part was cleaned up


def test_kill_9_during_an_overwrite_keeps_the_previous_object_whole(localzone_factory, tmp_path):
    root = tmp_path / "crash-overwrite"
    zone = localzone_factory("--bucket", GENERAL_BUCKET, root=root)
    zone.client(retries=NO_RETRIES).put_object(Bucket=GENERAL_BUCKET, Key="obj", Body=b"the old version")
    _kill_during_upload(zone, "obj")
    s3 = localzone_factory(root=root).client(retries=NO_RETRIES)
    assert s3.get_object(Bucket=GENERAL_BUCKET, Key="obj")["Body"].read() == b"the old version"
