"""The one-pass ListObjectsV2 reader gives what botocore's own parser gives, and defers to it otherwise."""

from __future__ import annotations

from xml.sax.saxutils import escape

import botocore.session
import pytest
from botocore.parsers import ResponseParserError, RestXMLParser
from hypothesis import given, settings
from hypothesis import strategies as st

from s3xfs.client.listing_parser import PARSED_ROOT, FastListingParser, check_200_error, use_fast_listings
from s3xfs.client.s3 import _fast_timestamp

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
S3_MODEL = botocore.session.get_session().get_service_model("s3")
LIST_V2 = S3_MODEL.operation_model("ListObjectsV2")
OUTPUT = LIST_V2.output_shape
UNUSED = ("Owner", "RestoreStatus")  # left out by the fast reader: s3xfs never reads them

# XML 1.0 cannot carry control characters: S3 sends such keys URL-encoded (EncodingType=url).
KEYS = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)
ENTRY = st.fixed_dictionaries({
    "key": KEYS, "size": st.integers(0, 5 << 40), "etag": st.text("0123456789abcdef", min_size=32, max_size=32),
    "checksums": st.lists(st.sampled_from(["CRC32", "CRC32C", "CRC64NVME", "SHA256"]), max_size=2),
    "owner": st.booleans(),
})


def page(entries: list[dict], prefixes: list[str], *, truncated: bool, namespace: bool = True,
         token: str | None = "tok", encoding: str | None = None) -> bytes:
    xmlns = f' xmlns="{NS}"' if namespace else ""
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult{xmlns}>',
             "<Name>b--usw2-az1--x-s3</Name><Prefix>p/</Prefix><Delimiter>/</Delimiter>",
             f"<MaxKeys>1000</MaxKeys><KeyCount>{len(entries) + len(prefixes)}</KeyCount>",
             f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
    if encoding:
        parts.append(f"<EncodingType>{encoding}</EncodingType>")
    if token:
        parts.append(f"<NextContinuationToken>{escape(token)}</NextContinuationToken>")
    for e in entries:
        parts.append(f"<Contents><Key>{escape(e['key'])}</Key><LastModified>2026-11-22T10:11:12.345Z</LastModified>"
                     f"<ETag>&quot;{e['etag']}&quot;</ETag>"
                     + "".join(f"<ChecksumAlgorithm>{c}</ChecksumAlgorithm>" for c in e["checksums"])
                     + f"<Size>{e['size']}</Size><StorageClass>EXPRESS_ONEZONE</StorageClass>"
                     + ("<Owner><ID>abc</ID><DisplayName>me</DisplayName></Owner>" if e["owner"] else "")
                     + "</Contents>")
    parts += [f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes]
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


def both(body: bytes, status: int = 200) -> tuple[dict, dict]:
    """Parsed by botocore, and as our client parses it (the check before, then our parser)."""
    response = {"status_code": status, "headers": {"x-amz-request-id": "r1"}, "body": body}
    checked = dict(response)
    check_200_error(LIST_V2, checked)
    assert checked["status_code"] == status
    fast = FastListingParser(timestamp_parser=_fast_timestamp).parse(checked, OUTPUT)
    slow = RestXMLParser(timestamp_parser=_fast_timestamp).parse(dict(response), OUTPUT)
    for item in slow.get("Contents", []):
        for name in UNUSED:
            item.pop(name, None)
    return fast, slow


@settings(max_examples=200, deadline=None)
@given(entries=st.lists(ENTRY, max_size=8), prefixes=st.lists(KEYS, max_size=4), truncated=st.booleans(),
       namespace=st.booleans(), encoding=st.sampled_from([None, "url"]))
def test_a_page_reads_as_botocore_reads_it(entries, prefixes, truncated, namespace, encoding):
    fast, slow = both(page(entries, prefixes, truncated=truncated, namespace=namespace, encoding=encoding))
    assert fast == slow


def test_an_empty_page_and_a_page_without_token():
    fast, slow = both(page([], [], truncated=False, token=None))
    assert fast == slow and "Contents" not in fast and fast["IsTruncated"] is False


@pytest.mark.parametrize("body", [b"<ListBucketResult><Contents><Key>a</Key>", b"not xml", b"<Other/>"])
def test_what_it_cannot_read_fails_as_botocore_fails(body):
    """A truncated or foreign body goes to botocore's parser: the same answer or the same error."""
    outcomes = []
    for parser in (FastListingParser(timestamp_parser=_fast_timestamp), RestXMLParser(timestamp_parser=_fast_timestamp)):
        try:
            outcomes.append(parser.parse({"status_code": 200, "headers": {}, "body": body}, OUTPUT))
        except ResponseParserError as exc:
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]


def test_errors_are_botocores():
    body = b"<Error><Code>NoSuchBucket</Code><Message>none</Message></Error>"
    fast, slow = both(body, status=404)
    assert fast == slow and fast["Error"]["Code"] == "NoSuchBucket"


@pytest.mark.parametrize("body", [b"<Error><Code>InternalError</Code></Error>", b"<ListBucketResult><Contents><Key>a"])
@pytest.mark.parametrize("operation", ["ListObjectsV2", "CompleteMultipartUpload"])
def test_an_error_or_a_cut_body_with_status_200_is_retried_as_botocore_would(body, operation):
    response = {"status_code": 200, "headers": {}, "body": body}
    check_200_error(S3_MODEL.operation_model(operation), response)
    assert response["status_code"] == 500 and PARSED_ROOT not in response


def test_a_good_page_is_parsed_once_and_an_empty_body_is_left_to_botocore():
    response = {"status_code": 200, "headers": {}, "body": page([], ["a/"], truncated=False)}
    check_200_error(LIST_V2, response)
    assert response[PARSED_ROOT].tag.endswith("ListBucketResult")
    empty = {"status_code": 200, "headers": {}, "body": b""}
    check_200_error(LIST_V2, empty)
    assert empty == {"status_code": 200, "headers": {}, "body": b""}


def test_only_the_client_given_the_fast_check_loses_botocores():
    import boto3
    import botocore.handlers

    def handlers(client):
        return client.meta.events._emitter._handlers.prefix_search("before-parse.s3.ListObjectsV2")

    ours = boto3.client("s3", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
    use_fast_listings(ours)
    other = boto3.client("s3", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
    assert check_200_error in handlers(ours) and botocore.handlers._handle_200_error not in handlers(ours)
    assert botocore.handlers._handle_200_error in handlers(other) and check_200_error not in handlers(other)
