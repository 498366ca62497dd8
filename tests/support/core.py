"""Drive the filesystem core in-process: a Filesystem on the in-memory client, on trio."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from s3xfs.client.memory import MemoryClient
from s3xfs.core.cache import CacheStore
from s3xfs.core.fs import Filesystem, FsOptions
from s3xfs.core.inodes import ROOT_INODE


def run_filesystem(fs_test: Callable[[Filesystem, MemoryClient], Awaitable[Any]], client: MemoryClient, *,
                   keys: dict[str, bytes] | None = None, clock: Callable[[], float] | None = None,
                   cache: CacheStore | None = None, **options: Any) -> Any:
    """Store ``keys``, then run ``fs_test(fs, client)`` inside trio with the filesystem attached to
    a nursery (and to the disk ``cache``, if given); the filesystem is closed (as at unmount)
    whatever happens."""
    for key, data in (keys or {}).items():
        client.put_object_sync(key, data)
    fs = Filesystem(client, FsOptions(**options), **({"clock": clock} if clock else {}), cache=cache)

    async def main() -> Any:
        async with trio.open_nursery() as nursery:
            fs.attach(nursery)
            try:
                return await fs_test(fs, client)
            finally:
                await fs.close()
                nursery.cancel_scope.cancel()

    return trio.run(main)


async def resolve(fs: Filesystem, path: str) -> int:
    """Walk ``path`` from the root like the kernel does; 0 when a component is missing."""
    ino = ROOT_INODE
    for part in filter(None, path.split("/")):
        if not fs.inodes.get(ino).is_dir:
            return 0
        attrs = await fs.lookup(ino, part)
        if attrs.ino == 0:
            return 0
        ino = attrs.ino
    return ino


async def names(fs: Filesystem, ino: int) -> set[str]:
    fh = await fs.opendir(ino)
    try:
        return {entry.name for _, entry in fs.readdir(fh, 0)} - {".", ".."}
    finally:
        fs.releasedir(fh)
