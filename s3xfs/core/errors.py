"""The one place where failures become errno values for the kernel.

The core raises :class:`FsError` for its own refusals; client errors already carry their errno
(see ``s3xfs/client/errors.py``, which maps S3 codes onto them). Anything else is a bug, and is
reported as EIO rather than crashing a FUSE handler.
"""

from __future__ import annotations

import errno as _errno
import logging

from ..client.errors import ClientError

log = logging.getLogger(__name__)


class FsError(Exception):
    """A refusal by the filesystem itself, with the errno the caller sees."""

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(message or _errno.errorcode.get(errno, str(errno)))
        self.errno = errno


def errno_of(exc: BaseException) -> int:
    """The errno to answer with for ``exc``."""
    if isinstance(exc, (FsError, ClientError)):
        return exc.errno
    log.error("unexpected error in a filesystem operation", exc_info=exc)
    return _errno.EIO
