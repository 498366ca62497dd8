"""Security (issue 9): what a mount may send, what it may write down, and who may enter it.

* A read-only mount creates only ReadOnly sessions and sends no mutating request, whatever is
  tried through it (every attempt is EROFS): checked in the endpoint's access log, its counters and
  the list of sessions it issued.
* No secret reaches anything a run wrote. One run does everything that could leak one: a
  read-write mount with DEBUG logs of s3xfs and botocore into a --log-file, a --cache and a
  staging directory in use, 2-second sessions plus forced expiries and injected ExpiredToken
  answers, a failed commit (its data rescued), and failed mounts (bad secret, missing bucket, a
  principal refused ReadWrite) and a failed ``s3xfs staging restore`` whose messages are captured.
  Then every file under the run's directory (logs, captured output, cache files including
  diskcache's SQLite, staged and rescued files and their extended attributes, the endpoint's
  access log and stderr) is searched for every secret key of the run and every session token and
  secret the endpoint issued (``s3xfs-localzone --expose-sessions``), whole, percent-encoded, or
  as any run of 32 characters of one.
  Access key ids are identifiers, not secrets (AWS prints them in CloudTrail; an operator needs
  them to match a log line with IAM): they may appear in logs and error messages, never in the
  cache or the staging directory, which have no use for them.
* The cache directory is 0700 with nothing in it readable by others, the staging directory 0700
  with files 0600, the log file 0600.
* Without --allow-other another user (uid 65534) cannot even stat the mount; with it, that user
  reads, and the kernel checks permission bits (default_permissions), so it cannot write.
* The endpoint refuses a session token on another bucket than its own, and a ReadOnly token for a
  write.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import signal
import stat
import string
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from s3xfs.localzone.stats import MUTATING_OPERATIONS
from tests.support import signing
from tests.support.localzone import DIRECTORY_BUCKET as BUCKET, REGION, LocalZone
from tests.support.mount import FUSE_MISSING, Mount, mount_env, needs_fuse, s3xfs_command

pytestmark = [pytest.mark.fuse, needs_fuse]
NOBODY = 65534
OTHER_BUCKET = "other--usw2-az1--x-s3"
WINDOW = 32  # a run of this many characters of a secret counts as a leak
READ_OPERATIONS = {"CreateSession", "HeadObject", "GetObject", "ListObjectsV2", "HeadBucket", "GetObjectAttributes"}


def issued_sessions(server: LocalZone) -> list[dict]:
    """Every credential the endpoint issued (it runs with --expose-sessions)."""
    with urllib.request.urlopen(f"{server.url}/_localzone/sessions", timeout=10) as response:
        return json.loads(response.read())["sessions"]


def logged_through(server: LocalZone, operation: str, key: str, timeout: float = 10.0) -> int:
    """The access log's length once it holds ``operation`` on ``key`` (its line is written after the
    answer is sent, so it may trail the client by a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = server.access_log()
        if any(row[2] == operation and row[4] == key for row in rows):
            return len(rows)
        assert time.monotonic() < deadline, f"{operation} {key} never reached the access log"
        time.sleep(0.02)


def random_access_key() -> str:
    return "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))


def random_secret() -> str:
    """40 characters of AWS's secret alphabet, with a '/' and a '+' (they change when percent-encoded)."""
    alphabet = string.ascii_letters + string.digits + "+/"
    body = "".join(secrets.choice(alphabet) for _ in range(38))
    return body[:10] + "/" + body[10:25] + "+" + body[25:]


# --- read-only mounts ------------------------------------------------------------------------------


def erofs_attempts(root: Path) -> dict[str, object]:
    """Every way to change something through a mount."""
    a, d = root / "dir" / "a.txt", root / "dir"
    return {
        "open O_WRONLY": lambda: os.open(a, os.O_WRONLY),
        "open O_RDWR": lambda: os.open(a, os.O_RDWR),
        "open O_APPEND": lambda: os.open(a, os.O_WRONLY | os.O_APPEND),
        "open O_TRUNC": lambda: os.open(a, os.O_RDONLY | os.O_TRUNC),
        "create": lambda: os.open(d / "new.txt", os.O_WRONLY | os.O_CREAT, 0o644),
        "truncate": lambda: os.truncate(a, 1),
        "mkdir": lambda: os.mkdir(d / "sub"),
        "rmdir": lambda: os.rmdir(d / "empty-looking"),
        "unlink": lambda: os.unlink(a),
        "rename": lambda: os.rename(a, d / "b.txt"),
        "link": lambda: os.link(a, d / "hard"),
        "symlink": lambda: os.symlink("a.txt", d / "soft"),
        "mkfifo": lambda: os.mkfifo(d / "fifo"),
        "mknod": lambda: os.mknod(d / "node", 0o644 | stat.S_IFREG),
        "chmod": lambda: os.chmod(a, 0o600),
        "chown": lambda: os.chown(a, 1, 1),
        "utime": lambda: os.utime(a, (1, 1)),
        "setxattr": lambda: os.setxattr(a, "user.x", b"y"),
        "removexattr": lambda: os.removexattr(a, "user.s3xfs.key"),
    }


def test_read_only_mount_sends_nothing_that_writes(localzone_factory, mount_factory, tmp_path):
    server = localzone_factory("--bucket", BUCKET, "--expose-sessions")
    s3 = server.client()
    s3.put_object(Bucket=BUCKET, Key="dir/a.txt", Body=b"alpha\n")
    s3.put_object(Bucket=BUCKET, Key="dir/empty-looking/x", Body=b"x")
    before = logged_through(server, "PutObject", "dir/empty-looking/x")  # the endpoint logs just after answering
    sessions_before = len(issued_sessions(server))  # boto3's own, above
    server.reset_stats()
    staging = tmp_path / "staging"
    mount = mount_factory(server, BUCKET, "--read-only", "--staging-dir", str(staging))
    assert (mount.path / "dir" / "a.txt").read_bytes() == b"alpha\n"
    assert sorted(os.listdir(mount.path / "dir")) == ["a.txt", "empty-looking"]
    refused = {}
    for name, attempt in erofs_attempts(mount.path).items():
        try:
            fd = attempt()
        except OSError as exc:
            refused[name] = errno.errorcode.get(exc.errno, exc.errno)
        else:
            if isinstance(fd, int):
                os.close(fd)
            refused[name] = "allowed"
    assert refused == dict.fromkeys(refused, "EROFS")
    assert os.access(mount.path / "dir" / "a.txt", os.W_OK) is False
    mount.stop()  # the unmount must send nothing either

    rows = server.access_log()[before:]
    operations = {row[2] for row in rows}
    assert operations <= READ_OPERATIONS, operations - READ_OPERATIONS
    assert not operations & MUTATING_OPERATIONS
    assert {row[7] for row in rows if row[2] != "CreateSession"} == {"ReadOnly"}  # every request signed ReadOnly
    stats = server.stats()
    assert stats["mutating_requests"] == 0 and stats["sessions"]["ReadWrite"] == 0 and stats["sessions"]["ReadOnly"] >= 1
    issued = issued_sessions(server)[sessions_before:]
    assert {session["mode"] for session in issued} == {"ReadOnly"}
    assert s3.get_object(Bucket=BUCKET, Key="dir/a.txt")["Body"].read() == b"alpha\n"
    assert not staging.exists()
    print(f"security: read-only mount: {len(refused)} kinds of change tried, all EROFS; {len(rows)} requests "
          f"({', '.join(sorted(operations))}), {stats['mutating_requests']} mutating; {len(issued)} sessions, all ReadOnly")


# --- no secret anywhere ----------------------------------------------------------------------------


@dataclass
class Run:
    """What one run wrote, and what must never be in it."""
    root: Path  # everything the run wrote is under this directory
    users_file: Path  # the endpoint's principals: holds the secrets by design, not searched
    secrets: set[str] = field(default_factory=set)  # secret keys, session secrets, session tokens
    key_ids: set[str] = field(default_factory=set)  # access key ids, of principals and of sessions
    sessions: list[dict] = field(default_factory=list)
    cache: Path = Path()
    staging: Path = Path()
    log_file: Path = Path()
    outputs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)


def run_cli(run: Run, name: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """An s3xfs command expected to fail; its output is kept under the run's directory too."""
    result = subprocess.run(s3xfs_command(*args), capture_output=True, text=True, env=env, timeout=120)
    (run.root / f"cli-{name}.out").write_text(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    run.outputs[name] = result
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One run that does everything that could leak a secret; the tests below search what it wrote."""
    if FUSE_MISSING:
        pytest.skip(FUSE_MISSING)
    root = tmp_path_factory.mktemp("security")
    users_dir = tmp_path_factory.mktemp("security-users")
    main = (random_access_key(), random_secret())
    reader = (random_access_key(), random_secret())
    wrong_secret = random_secret()
    users = {"principals": [
        {"name": "main", "access_key": main[0], "secret_key": main[1], "buckets": {"*": ["ReadOnly", "ReadWrite"]}},
        {"name": "reader", "access_key": reader[0], "secret_key": reader[1], "buckets": {BUCKET: ["ReadOnly"]}},
    ]}
    run = Run(root, users_dir / "users.json", cache=root / "cache", staging=root / "staging", log_file=root / "s3xfs.log")
    run.users_file.write_text(json.dumps(users))
    run.secrets |= {main[1], reader[1], wrong_secret}
    run.key_ids |= {main[0], reader[0]}
    server = LocalZone(root, "--users", str(run.users_file), "--bucket", BUCKET, "--session-ttl", "2", "--expose-sessions")
    server.start()
    mount = None
    try:
        s3 = server.client(*main)
        s3.put_object(Bucket=BUCKET, Key="data/read.bin", Body=os.urandom(300_000))
        s3.put_object(Bucket=BUCKET, Key="data/log.txt", Body=b"line 1\n")
        s3.put_object(Bucket=BUCKET, Key="data/patched.bin", Body=os.urandom(200_000))
        env = mount_env(*main)
        mount = Mount(server, BUCKET, root / "mnt", "--log-level", "debug", "--debug", "s3xfs:botocore:urllib3",
                      "--log-file", str(run.log_file), "--cache", str(run.cache), "--staging-dir", str(run.staging),
                      env=env).start()
        data = mount.path / "data"
        deadline = time.monotonic() + 6  # three session lifetimes: refreshes while the workload runs
        n = 0
        while time.monotonic() < deadline:
            n += 1
            (data / f"new-{n}.txt").write_bytes(os.urandom(1000 + n))
            (data / "read.bin").read_bytes()
            with open(data / "log.txt", "ab") as f:
                f.write(b"more\n")
            with open(data / "patched.bin", "r+b") as f:  # staged
                f.seek(1000 * n)
                f.write(b"patch")
            os.listdir(data)
            if n == 3:
                server.expire_sessions()  # live tokens refused: ExpiredToken, a new session at once
            if n == 5:
                server.set_faults(expire_token_rate=0.3)
            if n == 8:
                server.set_faults(expire_token_rate=0.0)
            time.sleep(0.2)
        # A commit refused (the object changed behind the mount): EIO, its data rescued into the staging dir.
        with open(data / "contested.txt", "wb") as f:
            f.write(b"mine")
            s3.put_object(Bucket=BUCKET, Key="data/contested.txt", Body=b"theirs")
            with pytest.raises(OSError):
                f.flush()
                os.fsync(f.fileno())
        # A staged file left in place: the daemon is killed while it is open.
        held = os.open(data / "read.bin", os.O_RDWR)
        os.pwrite(held, b"held open", 10)
        os.kill(mount.proc.pid, signal.SIGKILL)
        mount.proc.wait(timeout=10)
        try:
            os.close(held)
        except OSError as exc:
            assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        mount.stop()
        # Failed mounts and a failed restore: their messages, at DEBUG, are searched too.
        foreground = ["mount", "--foreground", "--endpoint-url", server.url, "--region", REGION, "--log-level", "debug",
                      "--debug", "s3xfs:botocore"]
        target = root / "failed-mnt"
        target.mkdir()
        run_cli(run, "bad-secret", [*foreground, BUCKET, str(target)], mount_env(main[0], wrong_secret))
        run_cli(run, "no-bucket", [*foreground, "missing--usw2-az1--x-s3", str(target)], env)
        run_cli(run, "refused-rw", [*foreground, BUCKET, str(target)], mount_env(*reader))
        leftovers = [p for p in run.staging.iterdir() if p.name.endswith((".s3xfs", ".rescued"))]
        run_cli(run, "restore-bad-secret", ["staging", "restore", "--endpoint-url", server.url, "--region", REGION,
                                            str(leftovers[0])], mount_env(main[0], wrong_secret))
        run.sessions = issued_sessions(server)
        for session in run.sessions:
            run.secrets |= {session["token"], session["secret_key"]}
            run.key_ids.add(session["access_key"])
    finally:
        if mount is not None:
            mount.stop()
        server.stop()
    yield run


def forms(secret: str) -> set[str]:
    """How a secret could be written: as is, percent-encoded (URLs, query strings)."""
    return {secret, quote(secret, safe=""), quote(secret, safe="/")}


def windows(secret: str) -> set[str]:
    """Every run of WINDOW characters of the secret (the secret itself if shorter)."""
    return {secret[i:i + WINDOW] for i in range(max(1, len(secret) - WINDOW + 1))}


def written_files(run: Run) -> Iterator[Path]:
    for directory, _, names in os.walk(run.root):
        for name in names:
            yield Path(directory) / name


def contents(path: Path) -> str:
    """A file's bytes and its extended attributes, as text (latin-1: every byte is one character)."""
    parts = [path.read_bytes()]
    try:
        parts += [name.encode() + b"=" + os.getxattr(path, name) for name in os.listxattr(path)]
    except OSError:
        pass
    return b"\n".join(parts).decode("latin-1")


def leaks(text: str, needles: set[str]) -> set[str]:
    """The needles (runs of WINDOW characters or whole short secrets) that occur in text."""
    found = set()
    lengths = {len(needle) for needle in needles}
    for length in lengths:
        wanted = {needle for needle in needles if len(needle) == length}
        for i in range(len(text) - length + 1):
            if text[i:i + length] in wanted:
                found.add(text[i:i + length])
    return found


def test_the_run_did_what_could_leak(run):
    """The search below is only worth something if the run really produced logs, refreshes and errors."""
    assert len(run.sessions) >= 4, run.sessions  # the first session, refreshes, and new ones after expiries
    log = run.log_file.read_text()
    assert "botocore" in log and "CreateSession" in log and "<redacted>" in log
    assert "ExpiredToken" in log
    assert "contested.txt" in log and ".rescued" in log  # the failed commit, and where its data went
    errors = {name: result.stderr for name, result in run.outputs.items()}
    assert all(result.returncode != 0 for result in run.outputs.values()), errors
    assert "credentials were rejected" in errors["bad-secret"]
    assert "does not exist" in errors["no-bucket"]
    assert "may not create a ReadWrite session" in errors["refused-rw"]
    assert "SignatureDoesNotMatch" in errors["restore-bad-secret"] or "rejected" in errors["restore-bad-secret"]
    assert any(run.cache.rglob("*")) and any(run.staging.iterdir())


def test_no_secret_or_token_in_anything_the_run_wrote(run):
    needles = set()
    for secret in run.secrets:
        for form in forms(secret):
            needles |= windows(form)
    found = {}
    searched = 0
    for path in written_files(run):
        text = contents(path)
        searched += len(text)
        hits = leaks(text, needles)
        if hits:
            found[str(path.relative_to(run.root))] = sorted(hit[:8] + "..." for hit in hits)
    assert searched > 100_000  # logs, cache and the rest really were searched
    assert found == {}
    print(f"security: {len(run.sessions)} sessions issued; {len(run.secrets)} secrets and tokens looked for "
          f"({len(needles)} runs of {WINDOW} characters); {len(list(written_files(run)))} files, "
          f"{searched / 2**20:.1f} MiB searched; found: {len(found)}")


def test_the_search_finds_what_it_looks_for(run):
    """Planted: 32 characters of a token, a percent-encoded secret key; 31 characters are not a leak."""
    token = run.sessions[0]["token"]
    secret = next(s for s in run.secrets if "/" in s)
    needles = windows(token) | set().union(*(windows(form) for form in forms(secret)))
    assert leaks(f"x-token: {token[10:42]}...", needles) == {token[10:42]}
    assert leaks(f"secret={quote(secret, safe='')}&", needles)
    assert leaks(f"x-token: {token[10:41]}...", needles) == set()


def test_access_key_ids_only_in_logs_and_messages(run):
    """Allowed in logs and error messages (identifiers); never kept in the cache or the staging directory."""
    for directory in (run.cache, run.staging):
        for path in directory.rglob("*"):
            if path.is_file():
                text = contents(path)
                assert not [key_id for key_id in run.key_ids if key_id in text], path


def test_cache_directory_is_private(run):
    info = run.cache.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()


def test_nothing_in_the_cache_directory_is_readable_by_others(run):
    """Only the 0700 directory keeps others out; its files should not count on it (a chmod, a copy)."""
    exposed = [f"{stat.S_IMODE(path.stat().st_mode):o} {path.relative_to(run.cache)}" for path in run.cache.rglob("*")
               if path.stat().st_mode & 0o077]
    assert exposed == []


def test_staging_directory_and_files_are_private(run):
    assert stat.S_IMODE(run.staging.stat().st_mode) == 0o700
    files = [path for path in run.staging.iterdir() if path.is_file()]
    assert files and {stat.S_IMODE(path.stat().st_mode) for path in files} == {0o600}


def test_log_file_is_private(run):
    assert stat.S_IMODE(run.log_file.stat().st_mode) == 0o600


# --- allow_other -----------------------------------------------------------------------------------


def as_nobody(action) -> str:
    """Run ``action`` in a child process that became uid/gid 65534; its result, or the errno name."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                answer = str(action())
            except OSError as exc:
                answer = errno.errorcode.get(exc.errno, str(exc.errno))
            os.write(write_fd, answer.encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        answer = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    return answer


def mount_options(path: Path) -> set[str]:
    """The mount's per-mount and superblock options, from the mount table."""
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            if fields[4] == str(path):
                separator = fields.index("-")
                return set(fields[5].split(",")) | set(fields[separator + 3].split(","))
    raise AssertionError(f"{path} is not mounted")


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's own are 0700: another user could not even reach
    a mount point there, whatever the mount allowed); mount points go in it."""
    path = Path(tempfile.mkdtemp(prefix="s3xfs-security-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # after the mounts (fixtures unwind in reverse)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")
def test_other_users_are_kept_out_unless_allow_other(localzone_factory, public_dir):
    server = localzone_factory("--bucket", BUCKET)
    server.client().put_object(Bucket=BUCKET, Key="dir/a.txt", Body=b"alpha\n")
    (public_dir / "plain").mkdir()
    assert as_nobody(lambda: os.listdir(public_dir)) != "EACCES"  # the way there is open to that user
    with Mount(server, BUCKET, public_dir / "private") as private:
        assert "allow_other" not in mount_options(private.path) and "default_permissions" in mount_options(private.path)
        assert as_nobody(lambda: os.stat(private.path).st_mode) == "EACCES"
        assert as_nobody(lambda: os.listdir(private.path)) == "EACCES"
        assert as_nobody(lambda: open(private.path / "dir" / "a.txt").read()) == "EACCES"
        assert sorted(os.listdir(private.path / "dir")) == ["a.txt"]  # its owner is served
    with Mount(server, BUCKET, public_dir / "shared", "--allow-other") as shared:
        assert {"allow_other", "default_permissions"} <= mount_options(shared.path)
        assert as_nobody(lambda: sorted(os.listdir(shared.path / "dir"))) == "['a.txt']"
        assert as_nobody(lambda: open(shared.path / "dir" / "a.txt").read()) == "alpha\n"
        # The kernel checks the bits (files 644 and directories 755, owned by the mounting user).
        assert as_nobody(lambda: open(shared.path / "dir" / "a.txt", "a").write("x")) == "EACCES"
        assert as_nobody(lambda: open(shared.path / "dir" / "new.txt", "w").write("x")) == "EACCES"
        assert as_nobody(lambda: os.unlink(shared.path / "dir" / "a.txt")) == "EACCES"
    assert server.client().get_object(Bucket=BUCKET, Key="dir/a.txt")["Body"].read() == b"alpha\n"
    assert server.client().list_objects_v2(Bucket=BUCKET, Prefix="dir/")["KeyCount"] == 1


# --- session scoping at the endpoint -----------------------------------------------------------------


def test_endpoint_refuses_a_token_on_another_bucket_and_a_read_only_token_for_a_write(localzone_factory):
    server = localzone_factory("--bucket", BUCKET, "--bucket", OTHER_BUCKET)
    s3 = server.client()
    s3.put_object(Bucket=OTHER_BUCKET, Key="theirs.txt", Body=b"theirs")

    def signed(method: str, bucket: str, key: str, creds: dict, body: bytes = b"") -> signing.Reply:
        return signing.call(method, signing.object_url(server.url, bucket, key), body=body,
                            access_key=creds["AccessKeyId"], secret_key=creds["SecretAccessKey"],
                            token=creds["SessionToken"])

    mine = s3.create_session(Bucket=BUCKET, SessionMode="ReadWrite")["Credentials"]
    assert signed("PUT", BUCKET, "mine.txt", mine, b"mine").status == 200  # valid where it was issued
    for method, body in (("GET", b""), ("PUT", b"overwrite"), ("DELETE", b"")):
        reply = signed(method, OTHER_BUCKET, "theirs.txt", mine, body)
        assert (reply.status, reply.code) == (403, "AccessDenied"), (method, reply)
    read_only = s3.create_session(Bucket=BUCKET, SessionMode="ReadOnly")["Credentials"]
    assert signed("GET", BUCKET, "mine.txt", read_only).status == 200
    for method, key, body in (("PUT", "mine.txt", b"overwrite"), ("PUT", "new.txt", b"new"), ("DELETE", "mine.txt", b"")):
        reply = signed(method, BUCKET, key, read_only, body)
        assert (reply.status, reply.code) == (403, "AccessDenied"), (method, key, reply)
    assert s3.get_object(Bucket=OTHER_BUCKET, Key="theirs.txt")["Body"].read() == b"theirs"
    assert s3.get_object(Bucket=BUCKET, Key="mine.txt")["Body"].read() == b"mine"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="")["Contents"]] == ["mine.txt"]


def test_endpoint_exposes_session_credentials_only_when_asked(localzone_factory):
    server = localzone_factory("--bucket", BUCKET)
    server.client().create_session(Bucket=BUCKET)
    with pytest.raises(urllib.error.HTTPError) as refused:
        issued_sessions(server)
    assert refused.value.code == 403 and b"--expose-sessions" in refused.value.read()
