"""Bucket names, zone ids, regions, endpoints and mount sources, checked before any request is made.

Why this exists: a mistyped bucket name or endpoint otherwise surfaces as an opaque botocore
``EndpointResolutionError`` or a DNS failure minutes into a mount. Every check here is a pure function
(standard library only) that fails with one printable sentence naming the rule that was broken.

Exception hierarchy (all are ``ValueError`` so generic argument handling still catches them)::

    NamingError             base: a user-supplied name, region, URL or mount source is unusable
    ├── InvalidBucketName   the bucket name breaks one of S3's naming rules
    ├── InvalidMountSource  the mount source (BUCKET[/prefix/] or s3://...) or --prefix is malformed
    ├── RegionUnknown       no usable region: malformed --region, or none can be derived
    └── InvalidEndpoint     the --endpoint-url override is malformed or combined with fips/dualstack

Region policy: botocore takes the region from configuration, never from the zone id, so the endpoint
it builds for ``data--usw2-az1--x-s3`` with region us-east-1 is ``...s3express-usw2-az1.us-east-1...``.
We therefore let an explicit region always win and only fall back to a small table of zone-id
prefixes confirmed for S3 Express (see /work/shared/S3EXPRESS.md section 1).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "NamingError",
    "InvalidBucketName",
    "InvalidMountSource",
    "RegionUnknown",
    "InvalidEndpoint",
    "BucketName",
    "Endpoint",
    "MountSource",
    "ZONE_REGIONS",
    "EXAMPLE_BUCKET",
    "parse_bucket_name",
    "region_for",
    "check_region",
    "dns_suffix",
    "zonal_endpoint",
    "control_endpoint",
    "endpoint_for",
    "check_endpoint_override",
    "parse_mount_source",
    "normalise_prefix",
]


class NamingError(ValueError):
    """A name, region, URL or mount source given by the user is unusable; ``str(exc)`` is printable as is."""


class InvalidBucketName(NamingError):
    """The bucket name breaks an S3 naming rule (the message names the first rule broken)."""


class InvalidMountSource(NamingError):
    """The mount source or --prefix cannot name a bucket and a directory inside it."""


class RegionUnknown(NamingError):
    """No region could be used: the explicit one is malformed, or none can be derived from the bucket."""


class InvalidEndpoint(NamingError):
    """The --endpoint-url override is not a bare http(s) origin."""


# Shown in messages: a concrete valid directory bucket name teaches the shape faster than a grammar.
EXAMPLE_BUCKET = "data--usw2-az1--x-s3"

# S3's documented limits for every bucket kind.
_MIN_LEN = 3
_MAX_LEN = 63

# The suffix that makes a name a directory bucket (S3 Express One Zone).
_DIRECTORY_SUFFIX = "--x-s3"

# Access points for directory buckets; they need a different request path we don't implement yet.
_ACCESS_POINT_SUFFIX = "--xa-s3"

# Reserved by S3: names starting with these can't be created, so accepting them only delays the error.
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")

# Reserved by S3 for other resource kinds that share the bucket namespace (suffix -> what it is).
_RESERVED_SUFFIXES = {
    "-s3alias": "access point aliases",
    "--ol-s3": "Object Lambda access point aliases",
    ".mrap": "Multi-Region Access Point aliases",
    "--table-s3": "S3 Tables buckets",
}

# Zone id: a region code (letters then digits, e.g. usw2, apne1), optional Local Zone segments
# (e.g. pkx1, lax1), then -az<digits>. Parsed from the end of the name, as the SDKs do.
_ZONE_RE = re.compile(r"[a-z]+[0-9]+(?:-[a-z0-9]+)*-az[0-9]+")

# Four dotted digit groups: S3 refuses names "formatted as an IP address", valid octets or not.
_IPV4_LIKE_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")

# Region names: partition-ish prefix, one or more words, a number (us-west-2, ap-northeast-1,
# cn-north-1, us-gov-west-1, eusc-de-east-1). Loose on purpose: new regions must not need a release.
_REGION_RE = re.compile(r"[a-z]{2,}(?:-[a-z]+)+-[0-9]{1,3}")

# Zone-id region code -> region, only the pairs confirmed for S3 Express (S3EXPRESS.md section 1).
# Other codes follow the same pattern but are unconfirmed: we ask for --region rather than guess.
ZONE_REGIONS: dict[str, str] = {
    "use1": "us-east-1",
    "use2": "us-east-2",
    "usw2": "us-west-2",
    "aps1": "ap-south-1",
    "apne1": "ap-northeast-1",
    "euw1": "eu-west-1",
    "eun1": "eu-north-1",
    "cnn1": "cn-north-1",
}

# S3 caps object keys at 1024 bytes of UTF-8; a longer prefix could never name anything.
_MAX_PREFIX_BYTES = 1024

# TCP ports; 0 means "any port" to a listener and can never be connected to.
_VALID_PORTS = range(1, 65536)

# Host names in an endpoint override: DNS labels, plus '_' which container networks hand out.
_HOST_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")


@dataclass(frozen=True)
class BucketName:
    """A bucket name that passed S3's naming rules, split into its directory-bucket parts."""

    name: str
    directory: bool  # ends with --x-s3: an S3 Express One Zone directory bucket
    base: str | None  # directory buckets: the part before --<zone-id>--x-s3
    zone_id: str | None  # directory buckets: e.g. 'usw2-az1', 'use1-az4', Local Zone 'cnn1-pkx1-az1'

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Endpoint:
    """Where requests for a bucket go, and whether botocore must be told (only for overrides)."""

    url: str  # the override to hand to botocore as endpoint_url, or the zonal URL for display
    zonal: bool  # url is the bucket's zonal (virtual-hosted) URL on AWS
    fips: bool
    dualstack: bool
    custom: bool  # an override (e.g. the local endpoint)

    @property
    def botocore_endpoint_url(self) -> str | None:
        """What to pass as ``endpoint_url``: only overrides; for AWS botocore resolves the zonal host itself.

        Passing the zonal URL back to botocore would make it prepend the bucket a second time.
        """
        return self.url if self.custom else None


@dataclass(frozen=True)
class MountSource:
    """The bucket to mount and the key prefix that becomes the mount's root."""

    bucket: BucketName
    prefix: str  # '' or ends with '/', never starts with '/' (directory buckets only list such prefixes)


# --------------------------------------------------------------------------------------------- names


def _fail(name: str, rule: str, *, example: bool = False) -> InvalidBucketName:
    tail = f" A valid directory bucket name looks like {EXAMPLE_BUCKET!r}." if example else ""
    return InvalidBucketName(f"Invalid bucket name {name!r}: {rule}.{tail}")


def _first_bad_char(name: str, allowed: str) -> str | None:
    for char in name:
        if char not in allowed:
            return char
    return None


# ASCII only on purpose: str.islower()/isdigit() would let through letters and digits S3 refuses.
_LOWER_DIGITS = "abcdefghijklmnopqrstuvwxyz0123456789"


def parse_bucket_name(name: str) -> BucketName:
    """Check ``name`` against S3's bucket naming rules and split a directory bucket name into base and zone.

    Rules are checked in a fixed order (length, case, characters, ends, dots, reserved words, shape)
    so the message always names the first, most fundamental, problem.
    """
    if not name:
        raise InvalidBucketName(f"The bucket name is empty: give one such as {EXAMPLE_BUCKET!r}.")
    directory = name.endswith(_DIRECTORY_SUFFIX)
    if not _MIN_LEN <= len(name) <= _MAX_LEN:
        raise _fail(name, f"bucket names are {_MIN_LEN} to {_MAX_LEN} characters long and this one has {len(name)}",
                    example=directory)
    if any("A" <= c <= "Z" for c in name):
        raise _fail(name, f"bucket names are lowercase{_lowercase_hint(name)}")
    if directory:
        bad = _first_bad_char(name, _LOWER_DIGITS + "-")
        if bad == ".":
            raise _fail(name, "directory bucket names may not contain '.' (only lowercase letters, digits and '-')",
                        example=True)
        if bad is not None:
            raise _fail(name, f"directory bucket names may contain only lowercase letters, digits and '-', "
                              f"not {bad!r}", example=True)
    else:
        bad = _first_bad_char(name, _LOWER_DIGITS + "-.")
        if bad is not None:
            raise _fail(name, f"bucket names may contain only lowercase letters, digits, '-' and '.', not {bad!r}")
    if name[0] not in _LOWER_DIGITS or name[-1] not in _LOWER_DIGITS:
        raise _fail(name, "bucket names must start and end with a lowercase letter or digit")
    if ".." in name:
        raise _fail(name, "bucket names may not contain two adjacent periods ('..')")
    if _IPV4_LIKE_RE.fullmatch(name):
        raise _fail(name, "bucket names may not be formatted as an IP address")
    for prefix in _RESERVED_PREFIXES:
        if name.startswith(prefix):
            raise _fail(name, f"bucket names may not start with {prefix!r}, which S3 reserves")
    if name.endswith(_ACCESS_POINT_SUFFIX):
        raise _fail(name, f"names ending in {_ACCESS_POINT_SUFFIX!r} are access points for directory buckets, "
                          "and access points are not supported yet; mount the bucket itself", example=True)
    for suffix, what in _RESERVED_SUFFIXES.items():
        if name.endswith(suffix):
            raise _fail(name, f"bucket names may not end with {suffix!r}, which S3 reserves for {what}")
    if not directory:
        return BucketName(name=name, directory=False, base=None, zone_id=None)
    return _split_directory_name(name)


def _lowercase_hint(name: str) -> str:
    """Suggest the lowercase spelling, but only when it would itself be accepted."""
    try:
        parse_bucket_name(name.lower())
    except InvalidBucketName:
        return ""
    return f" (did you mean {name.lower()!r}?)"


def _split_directory_name(name: str) -> BucketName:
    stem = name[: -len(_DIRECTORY_SUFFIX)]
    if "--" not in stem:
        raise _fail(name, "directory bucket names have the shape <base>--<zone-id>--x-s3 and this one has no "
                          "zone id", example=True)
    # The zone id never contains '--', so the last '--' separates it; this is also how the SDKs parse it.
    # The base is never empty here: the name starts with a letter or digit, checked above.
    base, zone_id = stem.rsplit("--", 1)
    if not zone_id:
        raise _fail(name, "the zone id before --x-s3 is empty", example=True)
    if not _ZONE_RE.fullmatch(zone_id):
        raise _fail(name, f"{zone_id!r} is not a zone id such as 'usw2-az1' or, for a Local Zone, 'cnn1-pkx1-az1'",
                    example=True)
    return BucketName(name=name, directory=True, base=base, zone_id=zone_id)


# ------------------------------------------------------------------------------------------- regions


def check_region(region: str) -> str:
    """Return ``region`` if it is shaped like an AWS region name, else raise RegionUnknown.

    A typo here otherwise becomes a DNS failure on a host name nobody will read closely.
    """
    if not _REGION_RE.fullmatch(region):
        raise RegionUnknown(f"Region {region!r} is not a region name such as 'us-west-2', 'ap-northeast-1' or "
                            "'cn-north-1': check --region.")
    return region


def region_for(bucket: BucketName, explicit: str | None) -> str:
    """The region to sign for and to build endpoints in: ``explicit`` if given, else from the zone id table."""
    if explicit is not None:
        return check_region(explicit)
    if not bucket.directory or bucket.zone_id is None:
        raise RegionUnknown(f"Cannot tell the region of general purpose bucket {bucket.name!r}: pass --region.")
    code = bucket.zone_id.split("-", 1)[0]
    region = ZONE_REGIONS.get(code)
    if region is None:
        raise RegionUnknown(f"Cannot tell the region of zone {bucket.zone_id!r} (bucket {bucket.name!r}): "
                            "pass --region.")
    return region


def dns_suffix(region: str) -> str:
    """The host name suffix of ``region``'s partition: China regions live under amazonaws.com.cn."""
    return "amazonaws.com.cn" if check_region(region).startswith("cn-") else "amazonaws.com"


# ----------------------------------------------------------------------------------------- endpoints


def zonal_endpoint(bucket: BucketName, region: str, *, fips: bool = False, dualstack: bool = False) -> str:
    """The bucket's data-plane URL, virtual-hosted (the only style S3 Express zonal endpoints serve)."""
    if not bucket.directory:
        raise InvalidBucketName(f"Bucket {bucket.name!r} is a general purpose bucket, which has no zonal endpoint: "
                                f"s3xfs mounts directory buckets such as {EXAMPLE_BUCKET!r}.")
    service = f"s3express-fips-{bucket.zone_id}" if fips else f"s3express-{bucket.zone_id}"
    stack = ".dualstack" if dualstack else ""
    return f"https://{bucket.name}.{service}{stack}.{region}.{dns_suffix(region)}"


def control_endpoint(region: str, *, fips: bool = False, dualstack: bool = False) -> str:
    """The regional control-plane URL (CreateBucket, ListDirectoryBuckets, ...), path style."""
    service = "s3express-control-fips" if fips else "s3express-control"
    stack = ".dualstack" if dualstack else ""
    return f"https://{service}{stack}.{region}.{dns_suffix(region)}"


def endpoint_for(bucket: BucketName, region: str, *, fips: bool = False, dualstack: bool = False,
                 override: str | None = None) -> Endpoint:
    """Where the bucket's requests go: the validated override, or the zonal endpoint on AWS.

    botocore silently ignores fips/dualstack when given an endpoint_url, so we refuse the combination
    instead of letting a user believe their traffic is FIPS-only.
    """
    if override is not None:
        url = check_endpoint_override(override)
        if fips or dualstack:
            flag = "--fips" if fips else "--dualstack"
            raise InvalidEndpoint(f"{flag} cannot be combined with --endpoint-url {url!r}: a custom endpoint "
                                  "is used as given.")
        return Endpoint(url=url, zonal=False, fips=False, dualstack=False, custom=True)
    url = zonal_endpoint(bucket, region, fips=fips, dualstack=dualstack)
    return Endpoint(url=url, zonal=True, fips=fips, dualstack=dualstack, custom=False)


def _bad_endpoint(url: str, why: str) -> InvalidEndpoint:
    return InvalidEndpoint(f"Invalid endpoint URL {url!r}: {why}.")


def check_endpoint_override(url: str) -> str:
    """Validate a user's --endpoint-url and return it as ``scheme://host[:port]`` (lowercase, no trailing '/').

    botocore appends the bucket after any path (``http://h/base`` becomes ``http://h/<bucket>/base``) and
    a trailing '/' changes the request path, so only a bare origin is accepted.
    """
    if not url or url.strip() != url or any(unicodedata.category(c) == "Cc" for c in url):
        raise _bad_endpoint(url, "it is empty or contains spaces or control characters")
    if "://" not in url:
        raise _bad_endpoint(url, f"it has no scheme; write it as 'http://{url}' or 'https://{url}'")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # bad port or unbalanced IPv6 brackets
        raise _bad_endpoint(url, f"it cannot be parsed ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise _bad_endpoint(url, f"the scheme must be http or https, not {parts.scheme!r}")
    if "@" in parts.netloc:
        raise _bad_endpoint(url, "it may not contain user information; credentials come from the AWS configuration")
    host = parts.hostname
    if not host:
        raise _bad_endpoint(url, "it has no host")
    if parts.netloc.endswith(":"):
        raise _bad_endpoint(url, "the port after ':' is empty")
    if port is not None and port not in _VALID_PORTS:
        raise _bad_endpoint(url, f"the port must be 1 to 65535, not {port}")
    if parts.path not in ("", "/"):
        raise _bad_endpoint(url, f"it may not have a path ({parts.path!r}); give only scheme, host and port")
    if "?" in url or "#" in url:
        raise _bad_endpoint(url, "it may not have a query or fragment; give only scheme, host and port")
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad_endpoint(url, f"{host!r} is not an IPv6 address") from None
        host = f"[{host}]"
    elif not all(_HOST_LABEL_RE.fullmatch(label) for label in host.removesuffix(".").split(".")):
        raise _bad_endpoint(url, f"{host!r} is not a valid host name")
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


# ------------------------------------------------------------------------------------- mount sources


def _control_char(text: str) -> tuple[int, str] | None:
    for index, char in enumerate(text):
        if unicodedata.category(char) == "Cc":
            return index, char
    return None


def normalise_prefix(raw: str, *, what: str = "prefix") -> str:
    """Return ``raw`` as '' or 'a/b/' (trailing '/' added), refusing what can't be a directory in the mount.

    Directory buckets only list prefixes ending in '/', and components that are empty, '.' or '..'
    can't be path components, so such a prefix would name a directory nobody can reach.
    """
    if raw == "":
        return ""
    found = _control_char(raw)
    if found is not None:
        raise InvalidMountSource(f"The {what} {raw!r} contains the control character {found[1]!r} at position "
                                 f"{found[0]}, which a prefix may not contain.")
    if raw.startswith("/"):
        suggestion = raw.strip("/")
        hint = f" (write {suggestion + '/'!r})" if suggestion else " (leave it out to mount the whole bucket)"
        raise InvalidMountSource(f"The {what} {raw!r} starts with '/': prefixes are relative to the bucket{hint}.")
    prefix = raw if raw.endswith("/") else raw + "/"
    for component in prefix[:-1].split("/"):
        if component == "":
            raise InvalidMountSource(f"The {what} {raw!r} has an empty path component ('//'), which can't be a "
                                     "directory in the mount.")
        if component in (".", ".."):
            raise InvalidMountSource(f"The {what} {raw!r} has a {component!r} component, which can't be a "
                                     "directory in the mount.")
    try:
        size = len(prefix.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidMountSource(f"The {what} {raw!r} is not valid Unicode text (it has a lone surrogate), so it "
                                 "can't be an S3 key.") from None
    if size > _MAX_PREFIX_BYTES:
        raise InvalidMountSource(f"The {what} {raw[:40]!r}... is {size} bytes of UTF-8 with its trailing '/'; S3 keys, "
                                 f"and so prefixes, are at most {_MAX_PREFIX_BYTES} bytes.")
    return prefix


# Any URL scheme (RFC 3986 syntax), so that s3a:// or https:// get a precise message, not a bucket-name one.
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def parse_mount_source(text: str, prefix_option: str | None = None) -> MountSource:
    """Parse ``BUCKET[/prefix/]`` or ``s3://BUCKET[/prefix/]``, merged with ``--prefix`` (None = not given).

    A prefix in the source and a different --prefix would make the mount's root ambiguous, so that
    is an error rather than one silently winning.
    """
    if not text or not text.strip():
        raise InvalidMountSource(f"The mount source is empty: give a bucket such as {EXAMPLE_BUCKET!r} or "
                                 f"'s3://{EXAMPLE_BUCKET}/some/prefix/'.")
    found = _control_char(text)
    if found is not None:
        raise InvalidMountSource(f"The mount source {text!r} contains the control character {found[1]!r} at "
                                 f"position {found[0]}.")
    rest = text
    scheme = _SCHEME_RE.match(text)
    if scheme is not None:
        if scheme.group(1).lower() != "s3":
            raise InvalidMountSource(f"The mount source {text!r} uses {scheme.group(0)!r}, but only s3:// URLs are "
                                     f"understood (e.g. 's3://{EXAMPLE_BUCKET}/prefix/') besides a plain bucket name.")
        rest = text[scheme.end():]
        if not rest:
            raise InvalidMountSource(f"The mount source {text!r} has no bucket name after 's3://'.")
    bucket_text, slash, path = rest.partition("/")
    if not bucket_text:
        raise InvalidMountSource(f"The mount source {text!r} starts with '/' where the bucket name should be: "
                                 f"give it as BUCKET/prefix/, e.g. '{EXAMPLE_BUCKET}/prefix/'.")
    bucket = parse_bucket_name(bucket_text)
    source_prefix = normalise_prefix(path, what="prefix in the mount source") if slash else ""
    if prefix_option is None:
        return MountSource(bucket=bucket, prefix=source_prefix)
    option_prefix = normalise_prefix(prefix_option, what="--prefix")
    if path and option_prefix != source_prefix:
        raise InvalidMountSource(f"The mount source {text!r} names prefix {source_prefix!r} but --prefix says "
                                 f"{option_prefix!r}: give the prefix only once.")
    return MountSource(bucket=bucket, prefix=option_prefix)
