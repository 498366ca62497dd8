"""The boto3 ObjectClient and its SessionManager against s3xfs-localzone (short session lifetimes)."""

from __future__ import annotations

import json
import random
import time

import pytest
import trio

from s3xfs.client import errors
from s3xfs.client.naming import parse_bucket_name
from s3xfs.client.retry import RetryPolicy
from s3xfs.client.s3 import ClientOptions, open_client
from tests.support.localzone import DIRECTORY_BUCKET, GENERAL_BUCKET, REGION, LocalZone


def options(server: LocalZone, **kwargs) -> ClientOptions:
    return ClientOptions(region=REGION, endpoint_url=server.url, **kwargs)


def bucket(name: str = DIRECTORY_BUCKET):
    return parse_bucket_name(name)


def test_object_operations_round_trip(localzone: LocalZone):
    async def main():
        async with open_client(bucket(), options(localzone)) as client:
            put = await client.put("c/a b%+.txt", b"hello world")
            info = await client.head("c/a b%+.txt")
            assert (info.size, info.etag) == (11, put.etag)
            assert await client.get_range("c/a b%+.txt", 6, 5, if_match=put.etag) == b"world"
            assert await client.get_range("c/a b%+.txt", 11, 5) == b""  # past the end: a short read
            chunks = [c async for c in client.iter_range("c/a b%+.txt", 0, 11, chunk_size=4)]
            assert chunks == [b"hell", b"o wo", b"rld"]
            await client.append("c/a b%+.txt", b"!", offset=11)
            with pytest.raises(errors.PreconditionFailed):
                await client.get_range("c/a b%+.txt", 0, 5, if_match=put.etag)  # pinned to the old ETag
            await client.rename("c/a b%+.txt", "c/renamed 100%.txt")
            assert (await client.head("c/renamed 100%.txt")).size == 12
            with pytest.raises(errors.NotFound):
                await client.head("c/a b%+.txt")
            with pytest.raises(errors.PreconditionFailed):
                await client.put("c/renamed 100%.txt", b"x", if_none_match=True)
            names = [o.key async for page in client.list("c/") for o in page.objects]
            assert names == ["c/renamed 100%.txt"]
            await client.delete("c/renamed 100%.txt")
            with pytest.raises(errors.NotFound):
                await client.head("c/renamed 100%.txt")

    trio.run(main)


def test_multipart_and_copy(localzone: LocalZone):
    async def main():
        async with open_client(bucket(), options(localzone)) as client:
            upload = await client.create_multipart("mp/file")
            part1 = bytes(5 * 1024 * 1024)
            etags = [(1, await client.upload_part("mp/file", upload, 1, part1)),
                     (2, await client.upload_part("mp/file", upload, 2, b"tail"))]
            result = await client.complete_multipart("mp/file", upload, etags)
            assert result.size == len(part1) + 4
            copied = await client.copy("mp/file", "mp/copy")
            assert copied.size == result.size
            failures = await client.delete_many(["mp/file", "mp/copy"])
            assert failures == []

    trio.run(main)


def test_general_purpose_bucket_uses_plain_sigv4(localzone: LocalZone):
    async def main():
        before = localzone.stats()["sessions"]
        async with open_client(bucket(GENERAL_BUCKET), options(localzone)) as client:
            assert client.sessions is None
            await client.put("gp/x", b"1")
            assert await client.get_range("gp/x", 0, 1) == b"1"
        assert localzone.stats()["sessions"] == before

    trio.run(main)


def test_concurrent_first_requests_make_one_create_session(localzone_factory):
    server = localzone_factory("--bucket", DIRECTORY_BUCKET)

    async def main():
        async with open_client(bucket(), options(server)) as client:
            server.reset_stats()  # the refresher may already have started: count from here
            async with trio.open_nursery() as nursery:
                for n in range(32):
                    nursery.start_soon(client.put, f"first/{n}", b"x")
            assert client.sessions.stats.created == 1

    trio.run(main)
    stats = server.stats()
    assert stats["requests"]["PutObject"] == 32
    assert stats["sessions"]["ReadWrite"] + stats["sessions"]["ReadOnly"] <= 1
    assert stats["requests"].get("CreateSession", 0) + 0 == stats["sessions"]["ReadWrite"] + stats["sessions"]["ReadOnly"]


def test_sessions_come_only_from_s3xfs_with_the_mode_asked(localzone_factory):
    """Fails loudly if botocore stops consulting the identity we install (its internals changed)."""
    server = localzone_factory("--bucket", DIRECTORY_BUCKET)

    async def main():
        async with open_client(bucket(), options(server, read_only=True)) as client:
            await client.probe()
            for _ in range(5):
                with pytest.raises(errors.NotFound):
                    await client.head("absent")
            return client.sessions.stats.created

    created = trio.run(main)
    stats = server.stats()
    assert stats["sessions"] == {"ReadOnly": created, "ReadWrite": 0}
    assert stats["requests"]["CreateSession"] == created == 1


def test_read_only_client_sends_no_mutating_request(localzone_factory):
    server = localzone_factory("--bucket", DIRECTORY_BUCKET)
    writer = server.client()
    writer.put_object(Bucket=DIRECTORY_BUCKET, Key="ro/data", Body=b"dataset")
    server.reset_stats()

    async def main():
        async with open_client(bucket(), options(server, read_only=True)) as client:
            assert await client.get_range("ro/data", 0, 7) == b"dataset"
            _ = [p async for p in client.list("ro/")]
            await client.head("ro/data")
            for write in (client.put("ro/x", b"1"), client.delete("ro/data"), client.rename("ro/data", "ro/y"),
                          client.append("ro/data", b"1", offset=7), client.create_multipart("ro/z")):
                with pytest.raises(errors.ReadOnly):
                    await write

    trio.run(main)
    stats = server.stats()
    assert stats["sessions"]["ReadWrite"] == 0 and stats["sessions"]["ReadOnly"] >= 1
    assert stats["mutating_requests"] == 0


def test_early_expiry_is_recovered_with_one_retry(localzone_factory):
    server = localzone_factory("--bucket", DIRECTORY_BUCKET)

    async def main():
        async with open_client(bucket(), options(server)) as client:
            await client.put("exp/a", b"1")
            assert server.expire_sessions() >= 1
            assert await client.get_range("exp/a", 0, 1) == b"1"  # ExpiredToken -> new session -> retried
            assert client.sessions.stats.invalidations == 1
            assert client.sessions.stats.created == 2

    trio.run(main)
    assert server.stats()["errors"].get("ExpiredToken") == 1


def test_injected_premature_expiry_never_surfaces(localzone_factory):
    server = localzone_factory("--bucket", DIRECTORY_BUCKET, "--fault-expire-token", "0.1", "--fault-seed", "7")

    async def main():
        async with open_client(bucket(), options(server)) as client:
            for n in range(60):
                await client.put(f"fx/{n}", b"x")
                assert await client.get_range(f"fx/{n}", 0, 1) == b"x"

    trio.run(main)
    assert server.stats()["errors"].get("ExpiredToken", 0) > 0


def test_read_only_principal_gets_an_actionable_error_for_read_write(localzone_factory, tmp_path):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"principals": [{
        "name": "reader", "access_key": "AKIAIOSFODNN7EXAMPLE", "secret_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "buckets": {DIRECTORY_BUCKET: ["ReadOnly"]}}]}))
    server = localzone_factory("--bucket", DIRECTORY_BUCKET, "--users", str(users))

    async def main(read_only: bool):
        async with open_client(bucket(), options(server, read_only=read_only)) as client:
            await client.probe()

    with pytest.raises(errors.SessionUnavailable) as excinfo:
        trio.run(main, False)
    message = str(excinfo.value)
    assert "may not create a ReadWrite session" in message and "--read-only" in message
    assert excinfo.value.errno == 13  # EACCES
    trio.run(main, True)  # the same principal, read-only: works


def test_outage_fails_fast_and_recovers_without_a_new_client(tmp_path, localzone_factory):
    root = tmp_path / "root"
    server = localzone_factory("--bucket", DIRECTORY_BUCKET, root=root)
    port = server.port
    policy = RetryPolicy(max_attempts=4, max_elapsed=3.0)

    async def main():
        async with open_client(bucket(), options(server, retry=policy)) as client:
            await client.put("out/a", b"before")
            server.stop()
            outage_started = time.monotonic()
            failures = 0
            while time.monotonic() - outage_started < 10:
                began = time.monotonic()
                with pytest.raises((errors.Unavailable, errors.SessionUnavailable)) as excinfo:
                    await client.get_range("out/a", 0, 6)
                assert time.monotonic() - began < 8, "an operation hung during the outage"
                assert "out/a" in str(excinfo.value) or "CreateSession" in str(excinfo.value) or excinfo.value.errno == 5
                failures += 1
                await trio.sleep(0.5)
            assert failures >= 2
            # Back on the same port and root: sessions are gone, the client recovers by itself.
            restarted = localzone_factory("--bucket", DIRECTORY_BUCKET, "--port", str(port), root=root,
                                          workdir=tmp_path)
            assert restarted.port == port
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert await client.get_range("out/a", 0, 6) == b"before"
                    break
                except (errors.Unavailable, errors.SessionUnavailable):
                    assert time.monotonic() < deadline, "the client did not recover"
                    await trio.sleep(0.2)

    trio.run(main)


@pytest.mark.slow
def test_sixty_seconds_of_two_second_sessions_without_a_failed_operation(localzone_factory):
    server = localzone_factory("--bucket", DIRECTORY_BUCKET, "--session-ttl", "2")
    duration = 60.0
    failures: list[str] = []
    done = [0]

    async def worker(client, n: int) -> None:
        rng = random.Random(n)
        deadline = trio.current_time() + duration
        while trio.current_time() < deadline:
            key = f"mix/{n}/{rng.randrange(20)}"
            try:
                choice = rng.random()
                if choice < 0.35:
                    await client.put(key, key.encode())
                elif choice < 0.7:
                    try:
                        assert await client.get_range(key, 0, 100) == key.encode()
                    except errors.NotFound:
                        pass
                elif choice < 0.85:
                    _ = [p async for p in client.list(f"mix/{n}/")]
                else:
                    await client.delete(key)
                done[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure counts
                failures.append(f"{type(exc).__name__}: {exc}")
            await trio.sleep(rng.uniform(0, 0.02))

    async def main():
        async with open_client(bucket(), options(server)) as client:
            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                for n in range(4):
                    nursery.start_soon(worker, client, n)
            return client.sessions.stats.snapshot(), time.monotonic() - started

    stats, elapsed = trio.run(main)
    created = server.stats()["sessions"]["ReadWrite"]
    print(f"\n[sessions] {done[0]} operations in {elapsed:.0f} s, {created} CreateSession, "
          f"refresh latency mean {stats['latency_mean'] * 1000:.1f} ms max {stats['latency_max'] * 1000:.1f} ms")
    assert failures == []
    # No session came from anywhere else. The server may count a few the client never got: a
    # CreateSession still in flight when the client closed, or one whose answer timed out (a
    # session failure on the client's side; the refresher tried again).
    assert stats["created"] <= created <= stats["created"] + stats["failures"] + 1, (created, stats)
    # Lifetimes are 1-2 s as seen by the client (Expiration has whole seconds); a refresh happens
    # when half the lifetime (plus up to 10% jitter) remains: one session per 0.4-1.0 s.
    assert elapsed / 1.0 * 0.9 <= created <= elapsed / 0.4 * 1.1
    assert server.stats()["errors"].get("ExpiredToken", 0) == 0


@pytest.mark.parametrize("name", [DIRECTORY_BUCKET, GENERAL_BUCKET])
def test_ranged_gets_skip_botocores_generic_path(localzone: LocalZone, monkeypatch, name: str):
    """Reads are signed by botocore's signer but never go through ``get_object``, and their bodies
    are received through the single-copy path. Fails if botocore's internals that RangedGet uses
    moved (reads would still work, through the generic path, but slower)."""
    import s3xfs.client.ranged_get as ranged_module
    import s3xfs.client.s3 as s3_module

    single_copy = []
    original = ranged_module.receive_exactly

    def spy(raw, length):
        single_copy.append(hasattr(raw, "_fp"))
        return original(raw, length)

    monkeypatch.setattr(ranged_module, "receive_exactly", spy)
    monkeypatch.setattr(s3_module, "receive_exactly", spy)
    data = bytes(range(256)) * 4096

    async def main():
        async with open_client(bucket(name), options(localzone)) as client:
            generic = []
            client._boto.meta.events.register("before-call.s3.GetObject", lambda **kw: generic.append(1))
            put = await client.put("fast/x", data)
            assert await client.get_range("fast/x", 1000, 300_000, if_match=put.etag) == data[1000:301_000]
            assert await client.get_range("fast/x", len(data) - 10, 100) == data[-10:]  # a short read at the end
            assert generic == []
            client._ranged = None  # botocore's path receives its bodies the same single-copy way
            assert await client.get_range("fast/x", 5, 70_000) == data[5:70_005]
            assert generic == [1]

    trio.run(main)
    assert single_copy == [True, True, True]


KEYS = ["c/a b%+.txt", "d/ünï cödé~!*'()=&;,$@:.bin", "e//double/slash", "f/-_.~tilde"]


@pytest.mark.parametrize("name", [DIRECTORY_BUCKET, GENERAL_BUCKET])
def test_ranged_gets_answer_as_botocore_would(localzone: LocalZone, name: str):
    """The same reads and the same failures, through RangedGet and through botocore's get_object."""
    async def outcome(client, key: str, start: int, length: int, if_match: str | None):
        try:
            return bytes(await client.get_range(key, start, length, if_match=if_match))
        except errors.ClientError as exc:
            return type(exc).__name__, exc.code, exc.status, exc.errno

    async def main():
        async with open_client(bucket(name), options(localzone)) as client:
            etags = {key: (await client.put(key, key.encode() * 3)).etag for key in KEYS}
            cases = [(key, 1, 7, etags[key]) for key in KEYS] + [
                ("c/a b%+.txt", 0, 4, "0123456789abcdef0123456789abcdef"),  # another version: 412
                ("c/a b%+.txt", 1000, 4, None),  # past the end: 416, a short read
                ("absent/key", 0, 4, None),  # 404 NoSuchKey
            ]
            assert client._ranged is not None
            generic_calls = []
            client._boto.meta.events.register("before-call.s3.GetObject", lambda **kw: generic_calls.append(1))
            fast = [await outcome(client, *case) for case in cases]
            assert generic_calls == [] and client._ranged.enabled  # every case above was RangedGet's
            client._ranged = None
            generic = [await outcome(client, *case) for case in cases]
            assert fast == generic
            assert fast[:len(KEYS)] == [(key.encode() * 3)[1:8] for key in KEYS]
            assert fast[len(KEYS):] == [("PreconditionFailed", "PreconditionFailed", 412, 116), b"",
                                        ("NotFound", "NoSuchKey", 404, 2)]

    trio.run(main)


class FakeAnswer:
    """What urllib3's pool returns, for answers the local endpoint never gives."""

    def __init__(self, status: int, body: bytes = b"", headers: dict | None = None, fp=None) -> None:
        self.status, self.body, self.headers, self._fp = status, body, headers or {}, fp
        self.closed = self.released = False

    def read(self, amount=None):
        data, self.body = self.body[:amount], self.body[amount:]
        return data

    def close(self):
        self.closed = True

    def release_conn(self):
        self.released = True


class FakePool:
    def __init__(self, make) -> None:
        self.make, self.answers = make, []

    def urlopen(self, *args, **kwargs):
        self.answers.append(self.make())
        return self.answers[-1]


WRONG_REGION = (b"<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region 'us-east-1' is wrong; "
                b"expecting 'eu-west-1'</Message><Region>eu-west-1</Region></Error>")


@pytest.mark.parametrize("answer", [lambda: FakeAnswer(301, headers={"Location": "elsewhere"}),
                                    lambda: FakeAnswer(400, WRONG_REGION),
                                    lambda: FakeAnswer(206, headers={"Content-Length": "-1"})],
                         ids=["redirect", "wrong-region", "bad-length"])
def test_answers_botocore_knows_to_follow_hand_reads_to_botocore(localzone: LocalZone, answer):
    """A general purpose bucket in another region answers a redirect or a 400 naming the right
    region, which botocore follows: that read, and every later one, is made by botocore."""
    pool = FakePool(answer)

    async def main():
        async with open_client(bucket(), options(localzone)) as client:
            await client.put("moved/x", b"content")
            client._ranged._pool = pool
            assert await client.get_range("moved/x", 0, 7) == b"content"
            assert await client.get_range("moved/x", 2, 3) == b"nte"
            assert not client._ranged.enabled

    trio.run(main)
    assert len(pool.answers) == 1 and pool.answers[0].closed and pool.answers[0].released


def test_a_connection_failing_mid_body_is_retried_then_unavailable(localzone: LocalZone):
    """An OSError from the socket under the body (EHOSTUNREACH, a TLS failure) is a broken
    connection like any other: retried within the budget, then EIO, never an unexpected error."""
    class Unreachable:
        def readinto(self, buffer):
            raise OSError(113, "No route to host")

    pool = FakePool(lambda: FakeAnswer(206, headers={"Content-Length": "7"}, fp=Unreachable()))

    async def main():
        async with open_client(bucket(), options(localzone, retry=RetryPolicy(max_attempts=3, max_elapsed=2.0))) as client:
            await client.put("unreachable/x", b"content")
            client._ranged._pool = pool
            with pytest.raises(errors.Unavailable) as excinfo:
                await client.get_range("unreachable/x", 0, 7)
            assert "No route to host" in str(excinfo.value)
            return client.failures["Unavailable"]

    assert trio.run(main) == 3
    assert len(pool.answers) == 3 and all(a.closed and a.released for a in pool.answers)


@pytest.mark.parametrize("body, code, message", [
    (b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>", "NoSuchKey", "gone"),
    (b"<ErrorResponse><Error><Code>InvalidArgument</Code><Message>bad</Message></Error></ErrorResponse>",
     "InvalidArgument", "bad"),
    (b'<Error xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Code>SlowDown</Code></Error>', "SlowDown", "Bad Request"),
    (b"", "400", "Bad Request"),
    (b"<html>proxy error</html>", "400", "Bad Request"),
])
def test_error_documents_give_botocores_code(body: bytes, code: str, message: str):
    from s3xfs.client.ranged_get import _error

    error = _error(400, {}, body).response
    assert (error["Error"]["Code"], error["Error"]["Message"], error["ResponseMetadata"]["HTTPStatusCode"]) == (code, message, 400)
