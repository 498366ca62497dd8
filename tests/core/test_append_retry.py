"""An append whose answer was lost and whose retry is refused as a wrong offset (it already landed)."""

import errno

import pytest
import trio

from s3xfs.client import errors
from s3xfs.client.memory import MemoryClient
from s3xfs.core.errors import FsError
from s3xfs.core.upload import AppendUpload, Staging


class LostAnswer(MemoryClient):
    """Appends land, then the caller is told the offset was wrong (what a retry after a lost answer sees)."""

    async def append(self, key, data, *, offset, if_match=None):
        await super().append(key, data, offset=offset, if_match=if_match)
        raise errors.PreconditionFailed("InvalidWriteOffset")


def test_an_append_that_landed_is_recognised(tmp_path):
    client = LostAnswer()
    info = client.put_object_sync("log.txt", b"start\n")

    async def main():
        upload = AppendUpload(client, "log.txt", info.size, info.etag, part_size=8 << 20)
        await upload.write(info.size, b"more\n")
        result = await upload.commit(Staging(str(tmp_path)))
        assert result.size == len(b"start\nmore\n")
        assert result.etag == (await client.head("log.txt")).etag

    trio.run(main)
    assert client.snapshot()["log.txt"] == b"start\nmore\n"


def test_a_refused_append_that_did_not_land_fails_and_is_rescued(tmp_path):
    client = MemoryClient()
    info = client.put_object_sync("log.txt", b"start\n")
    client.put_object_sync("log.txt", b"someone else\n")  # changed behind our back

    async def main():
        upload = AppendUpload(client, "log.txt", info.size, info.etag, part_size=8 << 20)
        await upload.write(info.size, b"mine\n")
        with pytest.raises(FsError) as raised:
            await upload.commit(Staging(str(tmp_path)))
        assert raised.value.errno == errno.EIO

    trio.run(main)
    assert client.snapshot()["log.txt"] == b"someone else\n"
    rescued = list(tmp_path.glob("log.txt.*.rescued"))
    assert len(rescued) == 1 and rescued[0].read_bytes() == b"mine\n"
