"""Local caches on disk (``--cache DIR``): data blocks and metadata, shared by mounts through diskcache.

- ``store``: the directory, its namespaces, the size cap, worker threads, clearing;
- ``blocks``: data blocks keyed by key + ETag, checksummed, and the range source the prefetcher reads;
- ``metadata``: listings and object attributes with their fetch time, served within the TTL;
- ``block_writer``: the process that stores fetched blocks, so that the daemon's threads do not.
"""

from .blocks import BlockCache, CachedSource
from .metadata import Entry, Listing, MetadataCache
from .store import CacheDirError, CacheStore, Namespace

__all__ = ["BlockCache", "CacheDirError", "CacheStore", "CachedSource", "Entry", "Listing", "MetadataCache",
           "Namespace"]
