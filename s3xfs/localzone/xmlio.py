"""XML in and out, S3 flavour: rendered as strings (fast), parsed with namespaces ignored."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from urllib.parse import quote

from . import errors

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;"}


def escape(text: str) -> str:
    if not any(ch in text for ch in "&<>\"\r") and text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 and ch not in "\t\n":
            out.append(f"&#x{ord(ch):x};")  # what S3 emits; ask for encoding-type=url to avoid it
        else:
            out.append(ch)
    return "".join(out)


def element(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def elements(pairs: Iterable[tuple[str, object]]) -> str:
    return "".join(element(name, value) for name, value in pairs if value is not None)


def document(root: str, inner: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NAMESPACE}">{inner}</{root}>'.encode()


def iso8601(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp % 1 * 1000):03d}Z"


def url_encode_key(key: str) -> str:
    """encoding-type=url: what S3 does, and what botocore's unquote_plus reverses exactly."""
    return quote(key, safe="/")


def error_document(error: errors.S3Error, resource: str, request_id: str) -> bytes:
    extra = "".join(element(name, value) for name, value in error.extra.items())
    inner = (
        element("Code", error.code) + element("Message", error.message) + extra
        + element("Resource", resource) + element("RequestId", request_id) + element("HostId", request_id)
    )
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>{inner}</Error>'.encode()


def parse(body: bytes) -> ET.Element:
    """Parse a request document, dropping namespaces; malformed input is MalformedXML."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise errors.malformed_xml()  # no entity expansion of any kind
    try:
        root = ET.fromstring(body)
    except (ET.ParseError, LookupError, ValueError):  # also an unknown or unusable encoding="..." declaration
        raise errors.malformed_xml() from None
    for node in root.iter():
        if isinstance(node.tag, str) and node.tag.startswith("{"):
            node.tag = node.tag.split("}", 1)[1]
    return root


def child_text(node: ET.Element, name: str) -> str | None:
    found = node.find(name)
    return None if found is None else (found.text or "")
