"""A faster reader of ListObjectsV2 pages for botocore.

botocore turns every XML element of a response into a value by walking the operation's model shape
by shape, several Python calls for every field of every key: most of a listing's cost on the client (``find`` and a cold ``ls -l`` are listings). This parser reads the page with one
ElementTree parse and one loop over its entries, and yields the same structure botocore would, so
the rest of botocore (the ``after-call`` handler that decodes ``EncodingType=url`` keys, errors,
retries, the response metadata) works unchanged. Every other response, and any page this parser
cannot read, goes to botocore's own code, so a malformed page fails exactly as it did before.

Fields of an entry that s3xfs does not use (``Owner``, ``RestoreStatus``) are left out.

botocore also parses every S3 body once *before* its parser, only to look at the root element (an
S3 error may come with status 200, and a body cut short must be retried): :func:`check_200_error`
does that check for a listing page and hands the tree it parsed to the parser, so a page is parsed
once; other responses get botocore's own check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree

import botocore.handlers
from botocore.parsers import ResponseParserFactory, RestXMLParser

LIST_V2 = "ListObjectsV2"
LIST_V2_OUTPUT = "ListObjectsV2Output"
PARSED_ROOT = "s3xfs_parsed_root"  # where check_200_error leaves a page's tree for the parser
_INTEGERS = frozenset({"KeyCount", "MaxKeys"})
_STRINGS = frozenset({"Name", "Prefix", "Delimiter", "EncodingType", "ContinuationToken", "NextContinuationToken",
                      "StartAfter"})


def _local(tag: str) -> str:
    """An element's name without its namespace (S3 answers in its 2006-03-01 namespace)."""
    return tag.rpartition("}")[2]


def _entry(element: ElementTree.Element, timestamp: Callable[[str], Any]) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for field in element:
        name, text = _local(field.tag), field.text or ""
        if name == "Size":
            item["Size"] = int(text)
        elif name == "LastModified":
            item["LastModified"] = timestamp(text)
        elif name == "ChecksumAlgorithm":  # a flattened list: one element per algorithm
            item.setdefault("ChecksumAlgorithm", []).append(text)
        elif name in ("Key", "ETag", "StorageClass", "ChecksumType"):
            item[name] = text
    return item


def _parse_xml(body: bytes) -> ElementTree.Element:
    """Parsed as botocore parses S3's XML: as UTF-8, whatever the declaration says."""
    parser = ElementTree.XMLParser(target=ElementTree.TreeBuilder(), encoding="utf-8")
    parser.feed(body)
    return parser.close()


def check_200_error(operation_model: Any, response_dict: dict | None, **kwargs: Any) -> None:
    """botocore's ``before-parse`` check of S3 answers, parsing a listing page only once: a page
    whose root is ``Error`` or that is not well-formed XML (cut short) becomes a 500, to be retried;
    a good page's tree is kept for :class:`FastListingParser`."""
    if (operation_model.name != LIST_V2 or not response_dict or response_dict.get("status_code") != 200
            or not response_dict.get("body")):
        botocore.handlers._handle_200_error(operation_model, response_dict, **kwargs)
        return
    try:
        root = _parse_xml(response_dict["body"])
    except ElementTree.ParseError:
        response_dict["status_code"] = 500
        return
    if root.tag == "Error":
        response_dict["status_code"] = 500
        return
    response_dict[PARSED_ROOT] = root


def use_fast_listings(client: Any) -> None:
    """Replace botocore's check of 200 answers by :func:`check_200_error` on this client only (the
    client must come from a session whose parser factory is :class:`FastListingParserFactory`)."""
    events = client.meta.events
    events.unregister("before-parse.s3.*", botocore.handlers._handle_200_error)
    events.register_first("before-parse.s3.*", check_200_error)


def parse_list_v2(body: bytes, timestamp: Callable[[str], Any], root: ElementTree.Element | None = None) -> dict[str, Any]:
    """The members of a ListObjectsV2 page, as botocore's parser gives them (less Owner and
    RestoreStatus), from ``body`` or its tree ``root`` if parsed already. Raises ValueError or
    ElementTree.ParseError for a page it cannot read."""
    if root is None:
        root = _parse_xml(body)
    if _local(root.tag) != "ListBucketResult":
        raise ValueError(f"not a ListBucketResult: {root.tag!r}")
    parsed: dict[str, Any] = {}
    contents: list[dict[str, Any]] = []
    prefixes: list[dict[str, str]] = []
    for child in root:
        name = _local(child.tag)
        if name == "Contents":
            contents.append(_entry(child, timestamp))
        elif name == "CommonPrefixes":
            prefixes.extend({"Prefix": sub.text or ""} for sub in child if _local(sub.tag) == "Prefix")
        elif name == "IsTruncated":
            parsed["IsTruncated"] = (child.text or "").strip().lower() == "true"
        elif name in _INTEGERS:
            parsed[name] = int(child.text or "0")
        elif name in _STRINGS:
            parsed[name] = child.text or ""
    if contents:
        parsed["Contents"] = contents
    if prefixes:
        parsed["CommonPrefixes"] = prefixes
    return parsed


class FastListingParser(RestXMLParser):
    """botocore's REST-XML parser, with :func:`parse_list_v2` for the body of a ListObjectsV2 page."""

    def _parse_payload(self, response: dict, shape: Any, member_shapes: dict, final_parsed: dict) -> None:
        if shape is not None and shape.name == LIST_V2_OUTPUT and "payload" not in shape.serialization:
            try:
                final_parsed.update(parse_list_v2(response["body"], self._timestamp_parser, response.get(PARSED_ROOT)))
                return
            except (ValueError, ElementTree.ParseError):
                pass  # botocore's parser reports it as it always has
        super()._parse_payload(response, shape, member_shapes, final_parsed)


class FastListingParserFactory(ResponseParserFactory):
    """Makes :class:`FastListingParser` for REST-XML (S3), botocore's parsers for the rest."""

    def create_parser(self, protocol_name: str) -> Any:
        if protocol_name == "rest-xml":
            return FastListingParser(**self._defaults)
        return super().create_parser(protocol_name)
