"""Bucket names, regions, endpoints and mount sources (s3xfs.client.naming), with botocore as a cross-check."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from s3xfs.client.naming import (
    ZONE_REGIONS,
    BucketName,
    Endpoint,
    InvalidBucketName,
    InvalidEndpoint,
    InvalidMountSource,
    NamingError,
    RegionUnknown,
    check_endpoint_override,
    control_endpoint,
    dns_suffix,
    endpoint_for,
    normalise_prefix,
    parse_bucket_name,
    parse_mount_source,
    region_for,
    zonal_endpoint,
)

DIR = "data--usw2-az1--x-s3"


def _one_sentence(message: str) -> None:
    """Messages go straight to a terminal: one line, a complete sentence."""
    assert "\n" not in message and message[:1].isupper() and message.endswith("."), message


# ------------------------------------------------------------------------------------- valid names

VALID = [
    # name, directory, base, zone_id
    ("data--usw2-az1--x-s3", True, "data", "usw2-az1"),
    ("abc--use1-az4--x-s3", True, "abc", "use1-az4"),
    ("a--apne1-az1--x-s3", True, "a", "apne1-az1"),
    ("my-data-2024--euw1-az3--x-s3", True, "my-data-2024", "euw1-az3"),
    ("x--cnn1-pkx1-az1--x-s3", True, "x", "cnn1-pkx1-az1"),  # Local Zone id
    ("logs--usw2-lax1-az1--x-s3", True, "logs", "usw2-lax1-az1"),  # Local Zone id
    ("my--odd--base--eun1-az10--x-s3", True, "my--odd--base", "eun1-az10"),  # '--' in the base: last '--' splits
    ("data---usw2-az1--x-s3", True, "data-", "usw2-az1"),  # parsed from the end, as botocore does
    ("1--usw2-az1--x-s3", True, "1", "usw2-az1"),
    ("b" * 47 + "--usw2-az1--x-s3", True, "b" * 47, "usw2-az1"),  # exactly 63
    ("abc", False, None, None),
    ("my.bucket-1", False, None, None),
    ("a" * 63, False, None, None),
    ("192.168.5.4a", False, None, None),  # not an IP address
    ("1.2.3", False, None, None),
    ("data--usw2-az1-x-s3", False, None, None),  # single hyphen: an ordinary general purpose name
    ("x-s3", False, None, None),
    ("xn-abc", False, None, None),
    ("bucket-s3alias-not", False, None, None),
]


@pytest.mark.parametrize("name,directory,base,zone", VALID, ids=[v[0][:40] for v in VALID])
def test_valid_names(name: str, directory: bool, base: str | None, zone: str | None) -> None:
    assert parse_bucket_name(name) == BucketName(name=name, directory=directory, base=base, zone_id=zone)
    assert str(parse_bucket_name(name)) == name


# ------------------------------------------------------------------------------------ invalid names

INVALID = [
    # id, name, fragments the message must contain (the rule, and the offending name)
    ("empty", "", ["empty", DIR]),
    ("too-short", "ab", ["3 to 63", "has 2", "'ab'"]),
    ("too-long", "a" * 64, ["3 to 63", "has 64"]),
    ("too-long-directory", "b" * 48 + "--usw2-az1--x-s3", ["63", "has 64", DIR]),
    ("upper", "Data--usw2-az1--x-s3", ["lowercase", "did you mean 'data--usw2-az1--x-s3'"]),
    ("upper-no-hint", "My_Bucket", ["lowercase", "'My_Bucket'"]),
    ("upper-general", "MyBucket", ["lowercase", "'mybucket'"]),
    ("underscore", "my_bucket", ["only lowercase letters, digits, '-' and '.'", "'_'"]),
    ("space", "my bucket", ["only lowercase letters", "' '"]),
    ("non-ascii", "bücket", ["only lowercase letters", "'ü'"]),
    ("nul", "abc\x00def", ["only lowercase letters", "'\\x00'"]),
    ("newline", "abc\ndef", ["only lowercase letters", "'\\n'"]),
    ("dot-directory", "my.data--usw2-az1--x-s3", ["may not contain '.'", DIR]),
    ("underscore-directory", "my_data--usw2-az1--x-s3", ["only lowercase letters, digits and '-'", "'_'"]),
    ("start-hyphen", "-bucket", ["start and end with a lowercase letter or digit"]),
    ("end-hyphen", "bucket-", ["start and end"]),
    ("start-dot", ".bucket", ["start and end"]),
    ("end-dot", "bucket.", ["start and end"]),
    ("double-dot", "my..bucket", ["'..'"]),
    ("ip-address", "192.168.5.4", ["IP address"]),
    ("ip-like", "999.1.1.1", ["IP address"]),
    ("prefix-xn", "xn--bucket", ["'xn--'", "reserves"]),
    ("prefix-sthree", "sthree-bucket", ["'sthree-'"]),
    ("prefix-sthree-directory", "sthree-data--usw2-az1--x-s3", ["'sthree-'"]),
    ("prefix-demo", "amzn-s3-demo-bucket", ["'amzn-s3-demo-'"]),
    ("suffix-s3alias", "bucket-s3alias", ["'-s3alias'", "access point aliases"]),
    ("suffix-ol", "bucket--ol-s3", ["'--ol-s3'", "Object Lambda"]),
    ("suffix-mrap", "bucket.mrap", ["'.mrap'"]),
    ("suffix-table", "bucket--table-s3", ["'--table-s3'"]),
    ("access-point", "ap--usw2-az1--xa-s3", ["access points", "not supported yet", DIR]),
    ("no-zone", "data--x-s3", ["<base>--<zone-id>--x-s3", "no zone id", DIR]),
    ("no-zone-short", "abc--x-s3", ["no zone id"]),
    ("empty-zone", "data----x-s3", ["zone id", "empty"]),
    ("zone-no-az", "data--usw2--x-s3", ["'usw2' is not a zone id", DIR]),
    ("zone-no-digits", "data--usw-az1--x-s3", ["'usw-az1' is not a zone id"]),
    ("zone-az-no-number", "data--usw2-az--x-s3", ["not a zone id"]),
    ("zone-junk", "data--usw2-az1x--x-s3", ["not a zone id"]),
    ("zone-empty-segment", "data--usw2--az1--x-s3", ["'az1' is not a zone id"]),
    ("empty-base", "a--usw2-az1--x-s3"[1:], ["start and end"]),
]


@pytest.mark.parametrize("name,fragments", [(n, f) for _, n, f in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_names(name: str, fragments: list[str]) -> None:
    with pytest.raises(InvalidBucketName) as info:
        parse_bucket_name(name)
    message = str(info.value)
    _one_sentence(message)
    for fragment in fragments:
        assert fragment in message


def test_first_rule_wins() -> None:
    # too long AND upper-case AND bad characters: length is reported first, then case, then characters
    assert "63" in str(pytest.raises(InvalidBucketName, parse_bucket_name, "A_" * 40).value)
    assert "lowercase" in str(pytest.raises(InvalidBucketName, parse_bucket_name, "A_b").value)
    assert "'_'" in str(pytest.raises(InvalidBucketName, parse_bucket_name, "_-a").value)


def test_errors_are_value_errors() -> None:
    for cls in (InvalidBucketName, InvalidMountSource, RegionUnknown, InvalidEndpoint):
        assert issubclass(cls, NamingError) and issubclass(cls, ValueError)


# ------------------------------------------------------------------------------------------ regions

@pytest.mark.parametrize("code,region", sorted(ZONE_REGIONS.items()), ids=sorted(ZONE_REGIONS))
def test_region_table(code: str, region: str) -> None:
    assert region_for(parse_bucket_name(f"data--{code}-az1--x-s3"), None) == region


def test_region_table_is_the_confirmed_one() -> None:
    assert ZONE_REGIONS == {"use1": "us-east-1", "use2": "us-east-2", "usw2": "us-west-2", "aps1": "ap-south-1",
                            "apne1": "ap-northeast-1", "euw1": "eu-west-1", "eun1": "eu-north-1",
                            "cnn1": "cn-north-1"}


def test_region_from_local_zone_id() -> None:
    assert region_for(parse_bucket_name("x--cnn1-pkx1-az1--x-s3"), None) == "cn-north-1"
    assert region_for(parse_bucket_name("x--usw2-lax1-az1--x-s3"), None) == "us-west-2"


@pytest.mark.parametrize("name,explicit", [
    (DIR, "us-east-1"),  # explicit wins even over the table
    (DIR, "us-west-2"),
    ("data--xyz9-az1--x-s3", "ap-southeast-7"),
    ("general-bucket", "eu-central-1"),
    (DIR, "us-gov-west-1"),
    (DIR, "cn-north-1"),
    (DIR, "eusc-de-east-1"),
], ids=["wins-over-table", "same-as-table", "unknown-zone", "general-purpose", "gov", "cn", "eusc"])
def test_explicit_region_wins(name: str, explicit: str) -> None:
    assert region_for(parse_bucket_name(name), explicit) == explicit


@pytest.mark.parametrize("explicit", ["", "us_west_2", "US-WEST-2", "uswest2", "us-west", "us-west-2 ", "west-2",
                                      "us-west-2a", "https://us-west-2", "usw2-az1"])
def test_malformed_explicit_region(explicit: str) -> None:
    with pytest.raises(RegionUnknown) as info:
        region_for(parse_bucket_name(DIR), explicit)
    _one_sentence(str(info.value))
    assert repr(explicit) in str(info.value) and "us-west-2" in str(info.value) and "--region" in str(info.value)


def test_unknown_zone_asks_for_region() -> None:
    with pytest.raises(RegionUnknown) as info:
        region_for(parse_bucket_name("data--xyz9-az1--x-s3"), None)
    message = str(info.value)
    _one_sentence(message)
    assert "'xyz9-az1'" in message and "'data--xyz9-az1--x-s3'" in message and "pass --region" in message


def test_general_purpose_bucket_needs_region() -> None:
    with pytest.raises(RegionUnknown) as info:
        region_for(parse_bucket_name("my-bucket"), None)
    _one_sentence(str(info.value))
    assert "general purpose" in str(info.value) and "--region" in str(info.value)


@pytest.mark.parametrize("region,suffix", [("us-west-2", "amazonaws.com"), ("us-gov-west-1", "amazonaws.com"),
                                           ("cn-north-1", "amazonaws.com.cn"), ("cn-northwest-1", "amazonaws.com.cn")])
def test_dns_suffix(region: str, suffix: str) -> None:
    assert dns_suffix(region) == suffix


# ---------------------------------------------------------------------------------------- endpoints

ZONAL = [
    ("plain", DIR, "us-west-2", False, False,
     "https://data--usw2-az1--x-s3.s3express-usw2-az1.us-west-2.amazonaws.com"),
    ("fips", DIR, "us-west-2", True, False,
     "https://data--usw2-az1--x-s3.s3express-fips-usw2-az1.us-west-2.amazonaws.com"),
    ("dualstack", DIR, "us-west-2", False, True,
     "https://data--usw2-az1--x-s3.s3express-usw2-az1.dualstack.us-west-2.amazonaws.com"),
    ("fips-dualstack", DIR, "us-west-2", True, True,
     "https://data--usw2-az1--x-s3.s3express-fips-usw2-az1.dualstack.us-west-2.amazonaws.com"),
    ("cn", "x--cnn1-az1--x-s3", "cn-north-1", False, False,
     "https://x--cnn1-az1--x-s3.s3express-cnn1-az1.cn-north-1.amazonaws.com.cn"),
    ("local-zone", "x--cnn1-pkx1-az1--x-s3", "cn-north-1", False, False,
     "https://x--cnn1-pkx1-az1--x-s3.s3express-cnn1-pkx1-az1.cn-north-1.amazonaws.com.cn"),
]


@pytest.mark.parametrize("name,region,fips,dualstack,url", [z[1:] for z in ZONAL], ids=[z[0] for z in ZONAL])
def test_zonal_endpoint(name: str, region: str, fips: bool, dualstack: bool, url: str) -> None:
    bucket = parse_bucket_name(name)
    assert zonal_endpoint(bucket, region, fips=fips, dualstack=dualstack) == url
    assert endpoint_for(bucket, region, fips=fips, dualstack=dualstack) == Endpoint(
        url=url, zonal=True, fips=fips, dualstack=dualstack, custom=False)
    assert endpoint_for(bucket, region).botocore_endpoint_url is None


def test_zonal_endpoint_needs_directory_bucket() -> None:
    with pytest.raises(InvalidBucketName, match="general purpose"):
        zonal_endpoint(parse_bucket_name("my-bucket"), "us-west-2")


def test_zonal_endpoint_refuses_malformed_region() -> None:
    with pytest.raises(RegionUnknown):
        zonal_endpoint(parse_bucket_name(DIR), "us-west-2.evil.example")


@pytest.mark.parametrize("region,fips,dualstack,url", [
    ("us-west-2", False, False, "https://s3express-control.us-west-2.amazonaws.com"),
    ("us-west-2", True, False, "https://s3express-control-fips.us-west-2.amazonaws.com"),
    ("us-west-2", False, True, "https://s3express-control.dualstack.us-west-2.amazonaws.com"),
    ("us-west-2", True, True, "https://s3express-control-fips.dualstack.us-west-2.amazonaws.com"),
    ("cn-north-1", False, False, "https://s3express-control.cn-north-1.amazonaws.com.cn"),
], ids=["plain", "fips", "dualstack", "fips-dualstack", "cn"])
def test_control_endpoint(region: str, fips: bool, dualstack: bool, url: str) -> None:
    assert control_endpoint(region, fips=fips, dualstack=dualstack) == url


@pytest.mark.parametrize("given,expected", [
    ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("http://127.0.0.1:9000/", "http://127.0.0.1:9000"),
    ("HTTP://LocalHost:9000/", "http://localhost:9000"),
    ("https://s3.example.com", "https://s3.example.com"),
    ("http://[::1]:8080", "http://[::1]:8080"),
    ("http://local_zone:80", "http://local_zone:80"),
    ("http://localhost", "http://localhost"),
], ids=["ip-port", "trailing-slash", "case", "https-name", "ipv6", "container-name", "no-port"])
def test_endpoint_override_valid(given: str, expected: str) -> None:
    assert check_endpoint_override(given) == expected


@pytest.mark.parametrize("given,fragment", [
    ("", "empty"),
    (" http://localhost:9000", "spaces"),
    ("http://local\x00host", "control"),
    ("localhost:9000", "no scheme"),
    ("127.0.0.1:9000", "no scheme"),
    ("ftp://localhost", "http or https"),
    ("s3://bucket", "http or https"),
    ("http://", "no host"),
    ("http://:9000", "no host"),
    ("http://localhost:", "port"),
    ("http://localhost:abc", "cannot be parsed"),
    ("http://localhost:70000", "cannot be parsed"),
    ("http://localhost:0", "1 to 65535"),
    ("http://localhost:9000/base", "path"),
    ("http://localhost:9000//", "path"),
    ("http://localhost:9000/?x=1", "query"),
    ("http://localhost:9000?x=1", "query"),
    ("http://localhost:9000#frag", "fragment"),
    ("http://user:pw@localhost:9000", "user information"),
    ("http://[::1", "cannot be parsed"),
    ("http://[zz::1]:80", "IPv6"),
    ("http://-bad-.example", "host name"),
    ("http://a..b", "host name"),
], ids=["empty", "space", "control", "no-scheme", "no-scheme-ip", "ftp", "s3", "no-host", "port-only",
        "empty-port", "port-text", "port-range", "port-zero", "path", "double-slash", "query", "query-no-slash",
        "fragment", "userinfo", "ipv6-unbalanced", "ipv6-bad", "bad-label", "empty-label"])
def test_endpoint_override_invalid(given: str, fragment: str) -> None:
    with pytest.raises(InvalidEndpoint) as info:
        check_endpoint_override(given)
    _one_sentence(str(info.value))
    assert fragment in str(info.value)


def test_endpoint_for_override() -> None:
    bucket = parse_bucket_name(DIR)
    endpoint = endpoint_for(bucket, "us-west-2", override="http://127.0.0.1:9000/")
    assert endpoint == Endpoint(url="http://127.0.0.1:9000", zonal=False, fips=False, dualstack=False, custom=True)
    assert endpoint.botocore_endpoint_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize("fips,dualstack,flag", [(True, False, "--fips"), (False, True, "--dualstack")])
def test_endpoint_for_override_refuses_fips_and_dualstack(fips: bool, dualstack: bool, flag: str) -> None:
    # botocore would silently ignore the flags with a custom endpoint_url
    with pytest.raises(InvalidEndpoint, match=flag):
        endpoint_for(parse_bucket_name(DIR), "us-west-2", fips=fips, dualstack=dualstack,
                     override="http://127.0.0.1:9000")


# ------------------------------------------------------------------------------------ mount sources

SOURCES = [
    ("bucket", DIR, None, ""),
    ("bucket-slash", DIR + "/", None, ""),
    ("prefix", DIR + "/logs/2024/", None, "logs/2024/"),
    ("prefix-no-slash", DIR + "/logs/2024", None, "logs/2024/"),
    ("s3-bucket", "s3://" + DIR, None, ""),
    ("s3-bucket-slash", "s3://" + DIR + "/", None, ""),
    ("s3-prefix", "s3://" + DIR + "/logs/", None, "logs/"),
    ("s3-upper-scheme", "S3://" + DIR + "/logs", None, "logs/"),
    ("general-purpose", "my.bucket/a/", None, "a/"),
    ("unicode-and-spaces", DIR + "/é t/ü/", None, "é t/ü/"),
    ("dots-inside-names", DIR + "/.hidden/a..b/", None, ".hidden/a..b/"),
    ("option-only", DIR, "logs", "logs/"),
    ("option-with-slash-source", DIR + "/", "logs/", "logs/"),
    ("option-identical", DIR + "/logs", "logs/", "logs/"),
    ("option-identical-s3", "s3://" + DIR + "/logs/", "logs", "logs/"),
    ("option-empty", DIR, "", ""),
    ("max-prefix", DIR + "/" + "a" * 1023, None, "a" * 1023 + "/"),
]


@pytest.mark.parametrize("text,option,prefix", [s[1:] for s in SOURCES], ids=[s[0] for s in SOURCES])
def test_mount_sources(text: str, option: str | None, prefix: str) -> None:
    source = parse_mount_source(text, option)
    assert source.prefix == prefix
    assert source.bucket.name in text


MOUNT_ERRORS = [
    ("empty", "", None, InvalidMountSource, "empty"),
    ("blank", "   ", None, InvalidMountSource, "empty"),
    ("https", "https://" + DIR + "/x/", None, InvalidMountSource, "only s3://"),
    ("s3a", "s3a://" + DIR, None, InvalidMountSource, "only s3://"),
    ("s3-nothing", "s3://", None, InvalidMountSource, "no bucket name"),
    ("leading-slash", "/" + DIR, None, InvalidMountSource, "starts with '/'"),
    ("s3-triple-slash", "s3:///" + DIR, None, InvalidMountSource, "starts with '/'"),
    ("double-slash", DIR + "/a//b/", None, InvalidMountSource, "empty path component"),
    ("double-slash-end", DIR + "/a//", None, InvalidMountSource, "empty path component"),
    ("bucket-double-slash", DIR + "//", None, InvalidMountSource, "starts with '/'"),
    ("dot", DIR + "/a/./b", None, InvalidMountSource, "'.' component"),
    ("dotdot", DIR + "/a/../b/", None, InvalidMountSource, "'..' component"),
    ("dotdot-only", DIR + "/..", None, InvalidMountSource, "'..' component"),
    ("too-long", DIR + "/" + "a" * 1024, None, InvalidMountSource, "1024"),
    ("too-long-multibyte", DIR + "/" + "é" * 512, None, InvalidMountSource, "1024"),
    ("nul", DIR + "/a\x00b/", None, InvalidMountSource, "control character '\\x00'"),
    ("control", DIR + "/a\tb/", None, InvalidMountSource, "control character '\\t'"),
    ("surrogate", DIR + "/a\ud800/", None, InvalidMountSource, "surrogate"),
    ("bad-bucket", "My_Bucket/x/", None, InvalidBucketName, "lowercase"),
    ("bad-bucket-s3", "s3://ab/x/", None, InvalidBucketName, "3 to 63"),
    ("conflict", DIR + "/a/", "b/", InvalidMountSource, "only once"),
    ("conflict-empty-option", DIR + "/a/", "", InvalidMountSource, "only once"),
    ("option-leading-slash", DIR, "/logs", InvalidMountSource, "write 'logs/'"),
    ("option-root-slash", DIR, "/", InvalidMountSource, "whole bucket"),
    ("option-dotdot", DIR, "../x", InvalidMountSource, "--prefix"),
    ("option-nul", DIR, "a\x00", InvalidMountSource, "control character"),
]


@pytest.mark.parametrize("text,option,error,fragment", [m[1:] for m in MOUNT_ERRORS], ids=[m[0] for m in MOUNT_ERRORS])
def test_mount_source_errors(text: str, option: str | None, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as info:
        parse_mount_source(text, option)
    assert type(info.value) is error
    _one_sentence(str(info.value))
    assert fragment in str(info.value)


def test_normalise_prefix() -> None:
    assert normalise_prefix("") == ""
    assert normalise_prefix("a") == "a/"
    assert normalise_prefix("a/b/") == "a/b/"


# ---------------------------------------------------------------------------------------- properties

_NAME_ALPHABET = "abcxz0129-._A \x00é"
_TAILS = ["--x-s3", "--xa-s3", "-s3alias", "--ol-s3", "--usw2-az1--x-s3", "--cnn1-pkx1-az1--x-s3", ".mrap", ""]

name_like = st.one_of(
    st.text(),
    st.text(alphabet=_NAME_ALPHABET, max_size=70),
    st.builds(lambda head, tail: head + tail, st.text(alphabet=_NAME_ALPHABET, max_size=60), st.sampled_from(_TAILS)),
)


@given(name_like)
@settings(max_examples=500)
def test_any_text_parses_or_is_refused(name: str) -> None:
    try:
        bucket = parse_bucket_name(name)
    except InvalidBucketName as exc:
        _one_sentence(str(exc))
    else:
        assert bucket.name == name and 3 <= len(name) <= 63
        assert bucket.directory == name.endswith("--x-s3")


_LOWER = "abcdefghijklmnopqrstuvwxyz"
_ALNUM = _LOWER + "0123456789"
bases = st.builds(lambda first, rest: first + rest, st.sampled_from(_ALNUM),
                  st.text(alphabet=_ALNUM + "-", max_size=30))
zone_ids = st.builds(
    lambda letters, digits, segments, az: f"{letters}{digits}{''.join('-' + s for s in segments)}-az{az}",
    st.text(alphabet=_LOWER, min_size=1, max_size=5),
    st.integers(min_value=0, max_value=99),
    st.lists(st.text(alphabet=_ALNUM, min_size=1, max_size=5), max_size=2),
    st.integers(min_value=0, max_value=99),
)


@given(bases, zone_ids)
def test_valid_directory_names_round_trip(base: str, zone_id: str) -> None:
    name = f"{base}--{zone_id}--x-s3"
    assume(len(name) <= 63 and not base.startswith(("xn--", "sthree-", "amzn-s3-demo-")))
    bucket = parse_bucket_name(name)
    assert (bucket.directory, bucket.base, bucket.zone_id) == (True, base, zone_id)


_PATH_ALPHABET = "ab./ é\x00\t"
mount_texts = st.one_of(
    st.text(),
    st.builds(lambda scheme, bucket, path: f"{scheme}{bucket}{path}",
              st.sampled_from(["", "s3://", "S3://", "https://", "s3:/"]),
              st.sampled_from([DIR, "my.bucket", "x--cnn1-pkx1-az1--x-s3", "Bad", ""]),
              st.text(alphabet=_PATH_ALPHABET, max_size=20)),
    # mostly-valid component lists, so that accepted sources are common too
    st.builds(lambda parts, end: f"{DIR}/{'/'.join(parts)}{end}",
              st.lists(st.sampled_from(["a", "b.c", "é t", "...", ".", "..", "", "x" * 300]), max_size=5),
              st.sampled_from(["", "/"])),
)


@given(mount_texts, st.one_of(st.none(), st.text(alphabet=_PATH_ALPHABET, max_size=12), st.text()))
@settings(max_examples=500)
def test_mount_source_never_raises_anything_else(text: str, option: str | None) -> None:
    try:
        source = parse_mount_source(text, option)
    except (InvalidMountSource, InvalidBucketName) as exc:
        _one_sentence(str(exc))
        return
    prefix = source.prefix
    assert prefix == "" or (prefix.endswith("/") and not prefix.startswith("/"))
    if prefix:
        assert all(part not in ("", ".", "..") for part in prefix[:-1].split("/"))
        assert len(prefix.encode("utf-8")) <= 1024


# ------------------------------------------------------------------------- cross-check with botocore

class _Captured(Exception):
    """Raised from before-send so no request leaves the machine."""


def _botocore_url(call: str, params: dict[str, str], region: str, **config: bool) -> str:
    """The scheme and host botocore sends ``call`` to (its first request: CreateSession for zonal calls)."""
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config

    session = boto3.session.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                                    region_name=region)
    client = session.client("s3", config=Config(retries={"max_attempts": 0}, **config))
    urls: list[str] = []

    def capture(request, **_: object) -> None:
        urls.append(request.url)
        raise _Captured

    client.meta.events.register("before-send.s3", capture)
    with pytest.raises(_Captured):
        getattr(client, call)(**params)
    parts = urlsplit(urls[0])
    return f"{parts.scheme}://{parts.netloc}"


BOTOCORE_ZONAL = [
    ("usw2", DIR, "us-west-2", False, False),
    ("use1", "data--use1-az4--x-s3", "us-east-1", False, False),
    ("usw2-fips", DIR, "us-west-2", True, False),
    ("use1-fips", "data--use1-az4--x-s3", "us-east-1", True, False),
    ("dualstack", DIR, "us-west-2", False, True),
    ("fips-dualstack", DIR, "us-west-2", True, True),
    ("cn", "data--cnn1-az1--x-s3", "cn-north-1", False, False),
    ("local-zone", "data--usw2-lax1-az1--x-s3", "us-west-2", False, False),
    # botocore takes the region from configuration, not the zone id: so do we when --region is given
    ("region-from-config", DIR, "us-east-1", False, False),
]


@pytest.mark.parametrize("name,region,fips,dualstack", [b[1:] for b in BOTOCORE_ZONAL],
                         ids=[b[0] for b in BOTOCORE_ZONAL])
def test_zonal_endpoint_matches_botocore(name: str, region: str, fips: bool, dualstack: bool) -> None:
    ours = zonal_endpoint(parse_bucket_name(name), region_for(parse_bucket_name(name), region), fips=fips,
                          dualstack=dualstack)
    theirs = _botocore_url("head_object", {"Bucket": name, "Key": "k"}, region, use_fips_endpoint=fips,
                           use_dualstack_endpoint=dualstack)
    assert ours == theirs


@pytest.mark.parametrize("region,fips,dualstack", [("us-west-2", False, False), ("us-east-1", True, False),
                                                   ("us-west-2", False, True), ("cn-north-1", False, False)],
                         ids=["plain", "fips", "dualstack", "cn"])
def test_control_endpoint_matches_botocore(region: str, fips: bool, dualstack: bool) -> None:
    theirs = _botocore_url("list_directory_buckets", {}, region, use_fips_endpoint=fips,
                           use_dualstack_endpoint=dualstack)
    assert control_endpoint(region, fips=fips, dualstack=dualstack) == theirs
