"""S3 operation handlers, one function per operation name (see routing.py for the names)."""

from __future__ import annotations

from collections.abc import Callable

from ..http import Response
from . import buckets, multipart, objects
from .call import Call

HANDLERS: dict[str, Callable[[Call], Response]] = {
    "CreateSession": buckets.create_session,
    "ListBuckets": buckets.list_buckets,
    "CreateBucket": buckets.create_bucket,
    "HeadBucket": buckets.head_bucket,
    "DeleteBucket": buckets.delete_bucket,
    "GetBucketLocation": buckets.get_bucket_location,
    "GetBucketVersioning": buckets.get_bucket_versioning,
    "ListObjectsV2": buckets.list_objects_v2,
    "ListObjects": buckets.list_objects_v1,
    "DeleteObjects": buckets.delete_objects,
    "Unsupported": buckets.unsupported,
    "PutObject": objects.put_object,
    "GetObject": objects.get_object,
    "HeadObject": objects.head_object,
    "DeleteObject": objects.delete_object,
    "CopyObject": objects.copy_object,
    "RenameObject": objects.rename_object,
    "GetObjectAttributes": objects.get_object_attributes,
    "CreateMultipartUpload": multipart.create_multipart_upload,
    "UploadPart": multipart.upload_part,
    "UploadPartCopy": multipart.upload_part_copy,
    "CompleteMultipartUpload": multipart.complete_multipart_upload,
    "AbortMultipartUpload": multipart.abort_multipart_upload,
    "ListParts": multipart.list_parts,
    "ListMultipartUploads": multipart.list_multipart_uploads,
}

# Operations that name a bucket which need not exist yet.
BUCKET_MAY_BE_MISSING = frozenset({"CreateBucket", "ListBuckets"})
# Operations whose handler reads (and so verifies) the request body; the server checks every other
# request's body itself before the handler runs.
READS_BODY = frozenset({"PutObject", "UploadPart", "CreateBucket", "DeleteObjects", "CompleteMultipartUpload"})

__all__ = ["HANDLERS", "BUCKET_MAY_BE_MISSING", "Call"]
