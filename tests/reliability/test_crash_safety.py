"""Crash safety (issue 9): kill -9 of the daemon during 100 concurrent writes, then remount.

Each round starts 100 writer threads on a read-write mount: small new files, small overwrites
(O_TRUNC), files of several parts streamed as multipart uploads, appends to existing objects
(fsync after each piece), and random writes that go through the staging directory (O_RDWR into
existing objects and new files; write-only appends followed by writes before them, which move the
content to a staged file). Every commit point of a writer (each fsync, the close) knows the exact content it commits.
At a seeded moment the daemon gets SIGKILL; the mount is lazily unmounted and mounted again with the
same --staging-dir. Then:

* every writer whose close (or fsync) returned 0 is intact from that point on: the bucket holds
  that content or a later one it attempted, read with boto3 and through the new mount (sha256);
* no partial object exists: every object is the content before the round or the exact content of
  one commit point the writer reached, and there is no other object;
* incomplete multipart uploads may exist (they are listed and counted) but none is visible: their
  key still holds what it held before;
* staged data is recoverable: every writer with a staged write acknowledged but no successful close
  has its staged file in the staging directory, holding every acknowledged write, tied to the bucket
  and key by its record (``s3xfs staging list``), and ``s3xfs staging restore`` stores it, or refuses
  it without overwriting when the object changed since.

The figures of each round are printed (``pytest -s``) as lines starting with ``crash-safety:``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.localzone import DIRECTORY_BUCKET as BUCKET, REGION, LocalZone
from tests.support.mount import daemon_pids, force_unmount, mount_env, needs_fuse, s3xfs_command

pytestmark = [pytest.mark.fuse, needs_fuse]
KiB = 1024
MiB = 1024 * KiB
WRITERS = 100
BLOCK = 64 * KiB  # unit of the random writers: each block is written once, in a shuffled order
PART_SIZE = "5M"  # the smallest upload part: files of a few MiB already stream as multipart uploads
DEAD_MOUNT = {errno.ENOTCONN, errno.ECONNABORTED}  # what a killed daemon's mount answers
KILL_DEADLINE = 60.0  # seconds: the kill happens by then even if the seeded moment never comes


# --- plans: what each writer does, and what each of its commit points stores ---------------------


@dataclass
class Step:
    kind: str  # "write" or "fsync"
    offset: int = 0
    data: bytes = b""
    staged: bool = False  # this write goes to a staged file


@dataclass
class Plan:
    key: str
    kind: str
    flags: int
    base: bytes | None  # the object before the round; None: no object
    steps: list[Step]
    delay: float  # seconds before the open
    pause: float  # seconds after each step
    snapshots: dict[int, bytes] = field(default_factory=dict)  # step index (len(steps): the close) -> content

    @property
    def close_index(self) -> int:
        return len(self.steps)

    @property
    def staging(self) -> bool:
        return any(step.staged for step in self.steps)

    def simulate(self) -> None:
        """The content each commit point (fsync, close) stores, from the writes before it."""
        truncate = self.base is None or self.flags & os.O_TRUNC
        content = bytearray(b"" if truncate else self.base)
        for index, step in enumerate(self.steps):
            if step.kind == "write":
                if len(content) < step.offset:
                    content.extend(bytes(step.offset - len(content)))
                content[step.offset:step.offset + len(step.data)] = step.data
            else:
                self.snapshots[index] = bytes(content)
        self.snapshots[self.close_index] = bytes(content)


@dataclass
class Outcome:
    acked: list[int] = field(default_factory=list)  # write steps that returned
    attempted: list[int] = field(default_factory=list)  # commit points (fsync, close) that were called
    ok: list[int] = field(default_factory=list)  # commit points that returned 0
    times: dict[int, float] = field(default_factory=dict)  # step -> time.monotonic() when it returned
    errors: list[int] = field(default_factory=list)  # errnos seen
    finished: bool = False


def content(rng: random.Random, size: int) -> bytes:
    """Random bytes without zeros, so a hole (zeros) never passes for written data."""
    return rng.randbytes(size).replace(b"\0", b"\1")


def make_plans(rng: random.Random, prefix: str) -> list[Plan]:
    plans: list[Plan] = []

    def add(kind: str, count: int, make: Callable[[str], Plan]) -> None:
        for n in range(count):
            plans.append(make(f"{prefix}/{kind}-{n:02d}.bin"))

    def small(key: str) -> Plan:  # a new file, one to three writes; every third fsyncs half-way
        data = content(rng, rng.randrange(0, 256 * KiB))
        cuts = sorted(rng.sample(range(len(data) + 1), 2)) if data else [0, 0]
        pieces = [data[:cuts[0]], data[cuts[0]:cuts[1]], data[cuts[1]:]]
        steps, offset = [], 0
        for i, piece in enumerate(pieces):
            steps.append(Step("write", offset, piece))
            offset += len(piece)
            if i == 0 and len(plans) % 3 == 0:
                steps.append(Step("fsync"))
        return Plan(key, "small", os.O_WRONLY | os.O_CREAT | os.O_EXCL, None, steps, rng.uniform(0, 1.0),
                    rng.uniform(0, 0.05))

    def overwrite(key: str) -> Plan:  # O_TRUNC of an existing object, new content of another size
        data = content(rng, rng.randrange(1, 200 * KiB))
        return Plan(key, "overwrite", os.O_WRONLY | os.O_TRUNC, content(rng, rng.randrange(1, 200 * KiB)),
                    [Step("write", 0, data)], rng.uniform(0, 1.0), 0.0)

    def multipart(key: str) -> Plan:  # 11 to 16 MiB written in 1 MiB pieces: 3 or 4 parts of 5 MiB
        data = content(rng, rng.randrange(11 * MiB, 16 * MiB))
        steps = [Step("write", at, data[at:at + MiB]) for at in range(0, len(data), MiB)]
        base = content(rng, 100 * KiB) if key.endswith(("00.bin", "01.bin")) else None  # two replace objects
        flags = os.O_WRONLY | (os.O_TRUNC if base else os.O_CREAT | os.O_EXCL)
        return Plan(key, "multipart", flags, base, steps, rng.uniform(0, 1.0), 0.0)

    def append(key: str) -> Plan:  # O_APPEND to an existing object, fsync after each piece
        base = content(rng, rng.randrange(1, 64 * KiB))
        steps, offset = [], len(base)
        for _ in range(rng.randrange(3, 7)):
            piece = content(rng, rng.randrange(1, 32 * KiB))
            steps += [Step("write", offset, piece), Step("fsync")]
            offset += len(piece)
        return Plan(key, "append", os.O_WRONLY | os.O_APPEND, base, steps, rng.uniform(0, 1.0), rng.uniform(0.05, 0.15))

    def random_blocks(key: str, base: bytes | None, flags: int, kind: str) -> Plan:
        size = (len(base) if base else rng.randrange(8, 25) * BLOCK)
        data = content(rng, size)
        order = list(range(0, size, BLOCK))
        rng.shuffle(order)
        steps = [Step("write", at, data[at:at + BLOCK], staged=True) for at in order]
        if kind == "wronly-random":  # an append first (held in memory); the writes before it move all to a staged file
            steps.insert(0, Step("write", size, content(rng, BLOCK), staged=False))
        if rng.random() < 0.4:
            steps.insert(len(steps) // 2, Step("fsync"))
        return Plan(key, kind, flags, base, steps, rng.uniform(0, 1.0), rng.uniform(0.03, 0.1))

    add("small", 30, small)
    add("overwrite", 15, overwrite)
    add("multipart", 10, multipart)
    add("append", 20, append)
    add("staged-existing", 10,
        lambda key: random_blocks(key, content(rng, rng.randrange(8, 25) * BLOCK), os.O_RDWR, "staged-existing"))
    add("staged-new", 10, lambda key: random_blocks(key, None, os.O_RDWR | os.O_CREAT | os.O_EXCL, "staged-new"))
    add("wronly-random", 5,
        lambda key: random_blocks(key, content(rng, rng.randrange(8, 25) * BLOCK), os.O_WRONLY, "wronly-random"))
    assert len(plans) == WRITERS
    for plan in plans:
        plan.simulate()
    return plans


def write_all(fd: int, data: bytes, offset: int, *, append: bool) -> None:
    """Like a careful program: a short write (the daemon died part-way) goes on with the rest."""
    view = memoryview(data)
    while True:
        n = os.write(fd, view) if append else os.pwrite(fd, view, offset + len(data) - len(view))
        view = view[n:]
        if not view:
            return
        if n == 0:
            raise OSError(errno.EIO, "write made no progress")


def run_writer(root: Path, plan: Plan, outcome: Outcome, progress: Callable[[], None]) -> None:
    """Carry out one plan through the mount, recording which calls returned."""
    try:
        time.sleep(plan.delay)
        try:
            fd = os.open(root / plan.key, plan.flags, 0o644)
        except OSError as exc:
            outcome.errors.append(exc.errno)
            return
        failed = False
        try:
            for index, step in enumerate(plan.steps):
                if step.kind == "write":
                    write_all(fd, step.data, step.offset, append=bool(plan.flags & os.O_APPEND))
                    outcome.times[index] = time.monotonic()
                    outcome.acked.append(index)
                else:
                    outcome.attempted.append(index)
                    os.fsync(fd)
                    outcome.times[index] = time.monotonic()
                    outcome.ok.append(index)
                if plan.pause:
                    time.sleep(plan.pause)
        except Exception as exc:  # noqa: BLE001 - anything but a dead mount's errno fails the round
            outcome.errors.append(getattr(exc, "errno", None) or -1)
            failed = True
        finally:
            if not failed:
                outcome.attempted.append(plan.close_index)
            try:
                os.close(fd)
                outcome.times[plan.close_index] = time.monotonic()
                if not failed:
                    outcome.ok.append(plan.close_index)
            except OSError as exc:
                outcome.errors.append(exc.errno)
    finally:
        outcome.finished = True
        progress()


# --- checks --------------------------------------------------------------------------------------


def digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def allowed_contents(plan: Plan, outcome: Outcome) -> set[str | None]:
    """sha256 of every content the key may hold: from the last commit point that returned 0 on (the
    ones attempted), or, if none returned, what was there before or any attempted commit point."""
    attempted = sorted(outcome.attempted)
    if outcome.ok:
        last = max(outcome.ok)
        return {digest(plan.snapshots[i]) for i in attempted if i >= last}
    return {digest(plan.base)} | {digest(plan.snapshots[i]) for i in attempted}


def difference(plan: Plan, data: bytes | None) -> str:
    """How ``data`` differs from each commit point's content: for a failure message."""
    if data is None:
        return "no object"
    parts = []
    for index, snapshot in sorted(plan.snapshots.items()):
        first = next((i for i, (a, b) in enumerate(zip(data, snapshot)) if a != b), min(len(data), len(snapshot)))
        parts.append(f"step {index}: {len(snapshot)} bytes, first difference at {first}")
    writes = [(i, step.offset, len(step.data)) for i, step in enumerate(plan.steps) if step.kind == "write"]
    return "; ".join(parts) + f"; writes (step, offset, length): {writes}"


def bucket_contents(server: LocalZone, prefix: str) -> dict[str, tuple[bytes, str]]:
    """Every object under ``prefix``: (content, ETag)."""
    s3 = server.client()
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            response = s3.get_object(Bucket=BUCKET, Key=item["Key"])
            found[item["Key"]] = (response["Body"].read(), response["ETag"].strip('"'))
    return found


def incomplete_uploads(server: LocalZone, prefix: str) -> list[dict]:
    s3 = server.client()
    uploads = []
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        uploads += page.get("Uploads", [])
    return uploads


def staging_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(s3xfs_command("staging", *args), capture_output=True, text=True, timeout=120,
                          env=env or mount_env())


def staging_list(staging: Path) -> list[dict]:
    result = staging_cli("list", "--staging-dir", str(staging), "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return [json.loads(line) for line in result.stdout.splitlines()]


# --- the rounds ----------------------------------------------------------------------------------


@pytest.fixture
def server(localzone_factory) -> LocalZone:
    return localzone_factory("--bucket", BUCKET)


def mount_args(staging: Path) -> tuple[str, ...]:
    return ("--staging-dir", str(staging), "--part-size", PART_SIZE)


def seed_bucket(server: LocalZone, plans: list[Plan]) -> dict[str, str]:
    """Put the objects that exist before the round; their ETags."""
    s3 = server.client()
    etags = {}
    for plan in plans:
        if plan.base is not None:
            etags[plan.key] = s3.put_object(Bucket=BUCKET, Key=plan.key, Body=plan.base)["ETag"].strip('"')
    return etags


@pytest.mark.slow
@pytest.mark.parametrize("seed, kill_after", [(101, 5), (202, 25), (303, 50), (404, 75), (505, 90)])
def test_kill_during_100_concurrent_writes(server, mount_factory, tmp_path, seed, kill_after):
    """kill_after: the kill comes once this many writers have finished and a staged writer is mid-way."""
    rng = random.Random(seed)
    prefix = f"round-{seed}"
    staging = tmp_path / "staging"
    plans = make_plans(rng, prefix)
    base_etags = seed_bucket(server, plans)
    mount = mount_factory(server, BUCKET, *mount_args(staging))

    # -- the writers, and the kill --
    outcomes = [Outcome() for _ in plans]
    changed = threading.Condition()

    def progress() -> None:
        with changed:
            changed.notify_all()

    def staged_mid_way() -> bool:
        return any(not outcome.finished and any(plan.steps[i].staged for i in outcome.acked)
                   for plan, outcome in zip(plans, outcomes))

    threads = [threading.Thread(target=run_writer, args=(mount.path, plan, outcome, progress), daemon=True)
               for plan, outcome in zip(plans, outcomes)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    deadline = started + KILL_DEADLINE
    with changed:
        while time.monotonic() < deadline:
            if sum(o.finished for o in outcomes) >= kill_after and staged_mid_way():
                break
            changed.wait(0.01)
    pids = daemon_pids(mount.path)
    assert pids == [mount.proc.pid]
    os.kill(pids[0], signal.SIGKILL)
    killed = time.monotonic()
    killed_at = killed - started
    finished_before_kill = sum(o.finished for o in outcomes)
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a writer hung on the dead mount"
    mount.proc.wait(timeout=10)
    force_unmount(mount.path)
    unexpected = {e for o in outcomes for e in o.errors} - DEAD_MOUNT
    assert not unexpected, f"errors other than a dead mount's: {sorted(errno.errorcode.get(e, e) for e in unexpected)}"

    # -- remount on the same staging directory --
    mount = mount_factory(server, BUCKET, *mount_args(staging))
    objects = bucket_contents(server, prefix)

    # No partial object, no stray key; what returned 0 is there.
    keys = {plan.key for plan in plans}
    assert set(objects) <= keys, f"objects nobody wrote: {sorted(set(objects) - keys)}"
    closed_ok = 0
    for plan, outcome in zip(plans, outcomes):
        data = objects.get(plan.key, (None, None))[0]
        allowed = allowed_contents(plan, outcome)
        assert digest(data) in allowed, (
            f"{plan.key} ({plan.kind}): {len(data) if data is not None else 'no object'} bytes is none of the "
            f"{len(allowed)} legitimate contents (commit points attempted {outcome.attempted}, returned {outcome.ok}); "
            f"{difference(plan, data)}; returned at {[(i, round(t - killed, 3)) for i, t in outcome.times.items()]} "
            "s after the kill")
        if plan.close_index in outcome.ok:
            closed_ok += 1
            assert data == plan.snapshots[plan.close_index]

    # The new mount reads the same bytes (and shows no file where the bucket has no object).
    for plan in plans:
        path = mount.path / plan.key
        if plan.key in objects:
            assert digest(path.read_bytes()) == digest(objects[plan.key][0]), plan.key
        else:
            assert not path.exists(), plan.key

    # Incomplete multipart uploads: allowed, never visible.
    uploads = incomplete_uploads(server, prefix)
    by_key = {plan.key: (plan, outcome) for plan, outcome in zip(plans, outcomes)}
    for upload in uploads:
        plan, outcome = by_key[upload["Key"]]
        assert plan.kind == "multipart", upload
        assert plan.close_index not in outcome.ok, f"{plan.key}: closed with 0 but an upload is still open"
        assert digest(objects.get(plan.key, (None,))[0]) == digest(plan.base), f"{plan.key}: an upload became visible"

    # Staged data: every writer caught with staged writes acknowledged has its file, whole and named.
    listing = staging_list(staging)
    strays = [entry for entry in listing if entry["bucket"] != BUCKET or entry["key"] not in keys or entry["in_use"]]
    assert not strays, strays
    entries: dict[str, dict] = {}
    for entry in listing:
        assert entry["key"] not in entries, f"two staging files for {entry['key']}"
        entries[entry["key"]] = entry
    in_flight = []
    unacknowledged: set[str] = set()
    for plan, outcome in zip(plans, outcomes):
        staged_acks = [i for i in outcome.acked if plan.steps[i].staged]
        entry = entries.get(plan.key)
        if plan.close_index in outcome.ok:
            if entry is not None:  # closed, its release not yet handled at the kill: the committed content
                assert Path(entry["path"]).read_bytes() == plan.snapshots[plan.close_index]
            continue
        if not staged_acks:
            if entry is not None:  # killed during its first staged write (e.g. the copy of the object)
                assert plan.staging, entry
                unacknowledged.add(entry["path"])
            continue
        assert entry is not None, f"{plan.key}: {len(staged_acks)} staged writes acknowledged, no staging file"
        in_flight.append((plan, entry))
        kept = Path(entry["path"]).read_bytes()
        assert entry["kind"] == "staged" and entry["offset"] == 0 and entry["upload_id"] is None
        # Based on the object before the round, or on what a commit (an fsync) made of it: the ETag
        # of the last commit the daemon lived to note, perhaps replaced since by one it did not.
        bases = {base_etags.get(plan.key), objects.get(plan.key, (None, None))[1]}
        assert entry["based_on"] in bases or (any(plan.steps[i].kind == "fsync" for i in outcome.ok)
                                              and entry["based_on"] is not None), (
            f"{plan.key} ({plan.kind}): record based on {entry['based_on']}; the object was {base_etags.get(plan.key)}, "
            f"is {objects.get(plan.key, (None, None))[1]}; commit points attempted {outcome.attempted}, "
            f"returned {outcome.ok}")
        for i in outcome.acked:  # every acknowledged write is in it (staged, or moved there)
            step = plan.steps[i]
            assert kept[step.offset:step.offset + len(step.data)] == step.data, f"{plan.key}: write {i} lost"

    # The listing people read names each file's bucket and key too.
    human = staging_cli("list", "--staging-dir", str(staging))
    assert human.returncode == 0 and all(f"{BUCKET}/{plan.key}" in human.stdout for plan, _ in in_flight), human.stdout

    # Recovery: another client changes the first file's object meanwhile; restore them all: that one is
    # refused and kept, the others are stored as they were at the kill; then it goes --to another key.
    restored = refused = 0
    refused_paths: set[str] = set()
    if in_flight:
        held = {plan.key: Path(entry["path"]).read_bytes() for plan, entry in in_flight}
        changed_plan, changed_entry = in_flight[0]
        server.client().put_object(Bucket=BUCKET, Key=changed_plan.key, Body=b"changed by another client")
        result = staging_cli("restore", "--staging-dir", str(staging), "--endpoint-url", server.url, "--region", REGION,
                             *[entry["path"] for _, entry in in_flight])
        assert "Traceback" not in result.stderr and result.returncode == 1, result.stderr
        after = bucket_contents(server, prefix)
        for plan, entry in in_flight:
            # A commit that landed just before the kill, before the record took its ETag, also counts as a change.
            current = objects.get(plan.key, (None, None))[1] if plan is not changed_plan else "changed"
            if current != entry["based_on"]:
                assert f"{entry['path']}: {BUCKET}/{plan.key} changed since this file was staged" in result.stderr
                if plan is not changed_plan:  # the bucket keeps what it had
                    assert after.get(plan.key, (None, None))[0] == objects.get(plan.key, (None, None))[0]
                assert Path(entry["path"]).read_bytes() == held[plan.key]
                refused_paths.add(entry["path"])
                refused += 1
            else:
                assert f"restored {entry['path']} to {BUCKET}/{plan.key}" in result.stdout
                assert after[plan.key][0] == held[plan.key] and not Path(entry["path"]).exists()
                restored += 1
        again = staging_cli("restore", "--staging-dir", str(staging), "--endpoint-url", server.url, "--region", REGION,
                            "--to", changed_plan.key + ".recovered", os.path.basename(changed_entry["path"]))
        assert again.returncode == 0, again.stderr
        recovered = server.client().get_object(Bucket=BUCKET, Key=changed_plan.key + ".recovered")["Body"].read()
        assert recovered == held[changed_plan.key]
        refused_paths.discard(changed_entry["path"])
    # What is left: refused files, files of writers whose close returned 0 (committed; the kill came
    # before their release), files whose first write was not acknowledged. Discarded: nothing is left.
    leftovers = staging_list(staging)
    assert all(entry["path"] in refused_paths | unacknowledged
               or by_key[entry["key"]][0].close_index in by_key[entry["key"]][1].ok for entry in leftovers), leftovers
    if leftovers:
        result = staging_cli("discard", "--staging-dir", str(staging), *[entry["path"] for entry in leftovers])
        assert result.returncode == 0, result.stderr
    assert staging_list(staging) == []
    print(f"crash-safety: seed {seed}: {WRITERS} writers, killed after {killed_at:.2f} s with {finished_before_kill} "
          f"finished; closes that returned 0: {closed_ok}; objects verified: {len(objects)} (boto3 and the new mount); "
          f"incomplete uploads: {len(uploads)}; staged files left: {len(listing)}, caught mid-way: {len(in_flight)}, "
          f"restored: {restored}, refused as changed: {refused} (one of them changed on purpose, then stored --to another "
          "key)")
    assert in_flight, "the kill caught no staged writer mid-way: the round checked no recovery"


# --- the staging commands on their own ------------------------------------------------------------


def restore_args(server: LocalZone, staging: Path) -> tuple[str, ...]:
    return ("--staging-dir", str(staging), "--endpoint-url", server.url, "--region", REGION)


def test_files_of_a_running_mount_are_in_use_and_left_alone(server, mount_factory, tmp_path):
    staging = tmp_path / "staging"
    mount = mount_factory(server, BUCKET, *mount_args(staging))
    with open(mount.path / "open.bin", "w+b", buffering=0) as f:  # read-write: staged from the first write
        f.write(b"x" * 1000)
        [entry] = staging_list(staging)
        assert entry["in_use"] and entry["pid"] == mount.proc.pid and entry["key"] == "open.bin"
        assert entry["state"] == f"in use by pid {mount.proc.pid}"
        for action in (("restore", *restore_args(server, staging)), ("discard", "--staging-dir", str(staging))):
            result = staging_cli(*action, os.path.basename(entry["path"]))
            assert result.returncode == 1 and f"in use by pid {mount.proc.pid}" in result.stderr, result
            assert Path(entry["path"]).exists()
    assert staging_list(staging) == []  # committed at close, then removed
    assert server.client().get_object(Bucket=BUCKET, Key="open.bin")["Body"].read() == b"x" * 1000


def test_rescued_bytes_are_restored_where_they_belong(server, mount_factory, tmp_path):
    """Failed commits (every request answered 500) leave rescued files: pending appends, which go back
    after the ETag they follow, and a small new file, created only if its key is still free."""
    staging = tmp_path / "staging"
    s3 = server.client()
    s3.put_object(Bucket=BUCKET, Key="log.txt", Body=b"first line\n")
    mount = mount_factory(server, BUCKET, *mount_args(staging))
    with open(mount.path / "log.txt", "ab", buffering=0) as log_file, \
            open(mount.path / "new.txt", "wb", buffering=0) as new:
        log_file.write(b"second line\n")
        new.write(b"a new file\n")
        server.set_faults(internal_error_rate=1.0)
        try:
            for f in (log_file, new):
                with pytest.raises(OSError) as failed:
                    os.fsync(f.fileno())
                assert failed.value.errno == errno.EIO
        finally:
            server.set_faults(internal_error_rate=0.0)
    entries = {entry["key"]: entry for entry in staging_list(staging)}
    assert entries["log.txt"]["kind"] == "rescued" and entries["log.txt"]["offset"] == len(b"first line\n")
    assert entries["new.txt"]["kind"] == "rescued" and entries["new.txt"]["based_on"] is None
    assert s3.get_object(Bucket=BUCKET, Key="log.txt")["Body"].read() == b"first line\n"

    # The new file's key was taken meanwhile: refused, then --force replaces it.
    s3.put_object(Bucket=BUCKET, Key="new.txt", Body=b"someone else's")
    result = staging_cli("restore", *restore_args(server, staging), entries["log.txt"]["path"], entries["new.txt"]["path"])
    assert result.returncode == 1
    assert f"restored {entries['log.txt']['path']} to {BUCKET}/log.txt" in result.stdout
    assert f"{BUCKET}/new.txt changed since this file was staged (it did not exist)" in result.stderr
    assert s3.get_object(Bucket=BUCKET, Key="log.txt")["Body"].read() == b"first line\nsecond line\n"
    assert s3.get_object(Bucket=BUCKET, Key="new.txt")["Body"].read() == b"someone else's"
    result = staging_cli("restore", *restore_args(server, staging), "--force", entries["new.txt"]["path"])
    assert result.returncode == 0, result.stderr
    assert s3.get_object(Bucket=BUCKET, Key="new.txt")["Body"].read() == b"a new file\n"
    assert staging_list(staging) == []


def test_restore_refuses_what_it_cannot_do_in_one_line(server, tmp_path):
    """A tail of a multipart upload, a file without a record, a missing file, bad options."""
    from s3xfs.core import staging as records

    staging = tmp_path / "staging"
    staging.mkdir(mode=0o700)
    tail = staging / "big.bin.x1.rescued"
    tail.write_bytes(b"tail")
    records.write_record(str(tail), records.new_record(BUCKET, "big.bin", records.RESCUED, offset=5 * MiB,
                                                       based_on=None, upload_id="UPLOAD-1"))
    anonymous = staging / "lost.x2.s3xfs"
    anonymous.write_bytes(b"")
    result = staging_cli("restore", *restore_args(server, staging), str(tail), str(anonymous))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "after the parts of multipart upload UPLOAD-1: s3xfs cannot complete that upload" in result.stderr
    assert f"{anonymous}: no record of its bucket and key" in result.stderr
    listing = staging_cli("list", "--staging-dir", str(staging))
    assert "where it belongs is unknown: it is empty, discard it" in listing.stdout
    for args, message in [
        (("restore", "nothing-here.s3xfs", "--staging-dir", str(staging)), "nothing-here.s3xfs: no such staging file"),
        (("restore", str(tail), str(anonymous), "--to", "x"), "--to names one key"),
        (("restore", str(tail), "--region", "mars-1"), "mars-1"),
        (("discard", str(staging)), "no such staging file"),
    ]:
        result = staging_cli(*args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result


def test_records_fall_back_to_a_sidecar_without_extended_attributes(tmp_path, monkeypatch):
    """A staging directory on a filesystem without user xattrs: the record goes to FILE.record and
    follows renames and commits all the same."""
    import trio

    from s3xfs.client.memory import MemoryClient
    from s3xfs.core import staging as records
    from s3xfs.core.prefetch import MemoryBudget
    from s3xfs.core.upload import Condition, Staging

    def no_xattrs(*args: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", no_xattrs)
    monkeypatch.setattr(os, "getxattr", no_xattrs)
    client = MemoryClient(BUCKET)
    staged = Staging(str(tmp_path)).new_file(client, "a/b.txt", Condition(if_none_match=True), part_size=MiB,
                                             budget=MemoryBudget(8 * MiB))
    assert os.path.exists(staged.path + records.SIDECAR_SUFFIX)
    trio.run(staged.write, 0, b"hello")
    staged.key = "a/renamed.txt"
    result = trio.run(staged.commit, Staging(str(tmp_path)))
    [entry] = records.entries(str(tmp_path))  # the sidecar is not listed as a file of its own
    assert (entry.record.key, entry.record.based_on, entry.in_use) == ("a/renamed.txt", result.etag, True)
    staged.remove()
    assert os.listdir(tmp_path) == []
