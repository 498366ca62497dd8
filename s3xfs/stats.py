"""``s3xfs stats MOUNTPOINT [--json]``: the live counters of a running mount, asked over its control
socket (see ``s3xfs/control.py`` for the transport, the protocol and the owner-only rule).

Every failure is one line on stderr and exit status 1: not a mount point, not an s3xfs mount, no
daemon answering (killed, or running without stats), a refusal (another user's mount), no answer
in time.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
from typing import Any

from .mount_table import FSTYPE, MountEntry, parse_mountinfo, read_mountinfo

TIMEOUT = 5.0  # seconds to connect, send the request and receive the answer
MAX_REPLY = 16 << 20  # bytes: far more than any answer; a bound against a misbehaving peer


class StatsError(Exception):
    """Why the stats cannot be shown; printed as one line."""


# --- finding the mount -------------------------------------------------------------------------------


def find_mount(path: str, mountinfo: str | None = None) -> MountEntry:
    """The s3xfs mount whose mount point is ``path``; StatsError for anything else.

    The path is resolved without entering the mount when possible (the parent's real path plus
    the name), so that a dead mount (ENOTCONN) or a slow daemon cannot stall the lookup; only a
    symbolic link to a mount point is resolved in full.
    """
    absolute = os.path.abspath(path)
    table: dict[str, MountEntry] = {}
    for entry in read_mountinfo() if mountinfo is None else parse_mountinfo(mountinfo):
        table[entry.mountpoint] = entry  # stacked mounts: the later one is the one visible
    head, name = os.path.split(absolute)
    candidates = [os.path.join(os.path.realpath(head), name)] if name else []
    candidates.append(os.path.realpath(absolute))
    entry = next((table[candidate] for candidate in candidates if candidate in table), None)
    if entry is None:
        try:
            os.lstat(absolute)
        except FileNotFoundError:
            raise StatsError(f"{absolute} does not exist") from None
        except OSError:
            pass
        raise StatsError(f"{absolute} is not a mount point")
    if entry.fstype != FSTYPE:
        raise StatsError(f"{entry.mountpoint} is not an s3xfs mount (it is a {entry.fstype} mount)")
    return entry


# --- asking the daemon -------------------------------------------------------------------------------


def ask(entry: MountEntry, request: str = "stats", *, timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send one request line to the daemon of ``entry`` and return its answer (StatsError if none)."""
    from .control import PROTOCOL, peer_credentials, socket_address

    where = entry.mountpoint
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_address(where, canonical=True))
        except (ConnectionRefusedError, FileNotFoundError):
            raise StatsError(_nobody_answers(where)) from None
        except TimeoutError:
            raise StatsError(f"the daemon of {where} did not accept the connection within {timeout:g} s") from None
        pid, uid, _ = peer_credentials(sock)
        owner = entry.owner
        if owner is not None and uid != owner:
            # Abstract names are first come, first served: never believe another user's process.
            raise StatsError(f"the control socket of {where} is held by uid {uid} (pid {pid}), not by the "
                             f"mount's owner (uid {owner}): not trusting it")
        try:
            sock.sendall(request.encode() + b"\n")
        except OSError:
            pass  # a refusal closes the connection at once: its answer is still there to read
        data = _receive_line(sock, where, timeout)
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise StatsError(f"the daemon of {where} sent something that is not JSON: {data[:80]!r}") from None
    if not isinstance(reply, dict):
        raise StatsError(f"the daemon of {where} sent an unexpected answer: {data[:80]!r}")
    if "error" in reply:
        if reply.get("code") == "EACCES":
            raise StatsError(str(reply["error"]))
        raise StatsError(f"the daemon of {where} refused {request!r}: {reply['error']}")
    if reply.get("protocol") != PROTOCOL:
        raise StatsError(f"the daemon of {where} speaks control protocol {reply.get('protocol')!r}, this command "
                         f"{PROTOCOL}: use the s3xfs that mounted it")
    return reply


def _receive_line(sock: socket.socket, where: str, timeout: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise StatsError(f"the daemon of {where} did not answer within {timeout:g} s") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk or size > MAX_REPLY:
            break
    data = b"".join(chunks).split(b"\n", 1)[0]
    if not data:
        raise StatsError(f"the daemon of {where} closed the connection without an answer")
    return data


def _nobody_answers(where: str) -> str:
    try:
        os.statvfs(where)  # always asks the daemon (a stat may be answered from the kernel's cache)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return (f"no s3xfs daemon answers for {where}: it has exited or was killed (the mount is dead); "
                    f"unmount it with: fusermount3 -u {where}")
    return (f"no s3xfs daemon answers for {where}: it has exited or was killed, or it runs without live "
            "stats (see its log)")


# --- rendering ---------------------------------------------------------------------------------------


def size(n: float) -> str:
    """Bytes for people: 512 B, 1.5 KiB, 12.0 MiB, 3.25 GiB."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            return f"{n:.2f} {unit}" if n < 10 else f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def count(n: int) -> str:
    return f"{n:,}"


def ratio(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


Row = tuple[str, str, str]  # label, value (right-aligned), detail
Section = tuple[Row, list[Row]]  # (title, total, detail), rows


def _sections(stats: dict[str, Any]) -> list[Section]:
    """Every group the answer has."""
    fuse = stats.get("fuse") or {}
    s3 = stats.get("s3") or {}
    sections: list[Section] = []

    sections.append((("Data", "", ""), [
        ("read through FUSE", size(fuse.get("bytes_read", 0)), ""),
        ("written through FUSE", size(fuse.get("bytes_written", 0)), ""),
        ("downloaded from S3", size(s3.get("bytes_received", 0)), ""),
        ("uploaded to S3", size(s3.get("bytes_sent", 0)), ""),
    ]))

    sections.append(_counted("FUSE requests", fuse.get("requests") or {}))
    errors = fuse.get("errors") or {}
    if errors:
        sections.append(_counted("FUSE errors", errors))

    (title, total, _), rows = _counted("S3 requests", s3.get("requests") or {})
    retries = s3.get("retries", 0)
    sections.append(((title, total, f"{count(retries)} {'retry' if retries == 1 else 'retries'}"), rows))
    failures = s3.get("failures") or {}
    if failures:
        sections.append(_counted("S3 failures", failures))

    sessions = stats.get("sessions")
    if sessions:
        rows = [("created", count(sessions.get("created", 0)), ""),
                ("refreshed", count(sessions.get("refreshes", 0)), ""),
                ("failed", count(sessions.get("failures", 0)), ""),
                ("invalidated", count(sessions.get("invalidations", 0)), "refused by the server")]
        if sessions.get("created"):
            rows.append(("CreateSession latency", f"{sessions.get('latency_mean', 0) * 1000:.0f} ms",
                         f"mean; max {sessions.get('latency_max', 0) * 1000:.0f} ms"))
        if sessions.get("last_error"):
            rows.append(("last failure", "", str(sessions["last_error"])[:100]))
        sections.append(((f"Sessions ({sessions.get('mode', '?')})", "", ""), rows))

    rows = []
    prefetch = stats.get("prefetch") or {}
    hits, misses = prefetch.get("hits", 0), prefetch.get("misses", 0)
    rows.append(("read-ahead", ratio(hits, hits + misses),
                 f"{count(hits)} of {count(hits + misses)} reads found their data in memory"))
    opens = stats.get("opens") or {}
    kept, total_opens = opens.get("opens_kept_cache", 0), opens.get("opens", 0)
    rows.append(("kernel page cache", ratio(kept, total_opens),
                 f"{count(kept)} of {count(total_opens)} opens kept it (file unchanged since the last open)"))
    lookups = stats.get("lookups") or {}
    local = lookups.get("lookups_cached", 0) + lookups.get("lookups_negative_cached", 0)
    remote = lookups.get("lookups_remote", 0)
    rows.append(("lookups", ratio(local, local + remote),
                 f"{count(local)} of {count(local + remote)} answered from memory"))
    rows.append(("directory listings", count(lookups.get("listings", 0)),
                 f"LISTs of whole directories; {count(lookups.get('listings_ahead', 0))} ahead of a traversal"))
    cache = stats.get("cache")
    if cache:
        blocks = cache.get("blocks") or {}
        block_hits = blocks.get("block_hits", 0)
        block_all = block_hits + blocks.get("block_misses", 0) + blocks.get("blocks_corrupt", 0)
        detail = f"{count(block_hits)} of {count(block_all)} blocks; {count(blocks.get('blocks_stored', 0))} stored"
        if blocks.get("blocks_corrupt"):
            detail += f", {count(blocks['blocks_corrupt'])} corrupt"
        rows.append(("disk cache: data", ratio(block_hits, block_all), detail))
        meta = cache.get("metadata") or {}
        for label, hit, miss in (("disk cache: listings", "listings_restored", "listing_misses"),
                                 ("disk cache: entries", "entries_restored", "entry_misses")):
            got, lost = meta.get(hit, 0), meta.get(miss, 0)
            rows.append((label, ratio(got, got + lost), f"{count(got)} of {count(got + lost)} restored"))
        writer = cache.get("block_writer")
        if writer:
            if writer.get("in_daemon"):
                state = "gone: the daemon stores blocks itself (see the log)"
            elif writer.get("pid"):
                state = f"pid {writer['pid']}, {count(writer.get('stored', 0))} of {count(writer.get('sent', 0))} blocks stored"
            else:
                state = "not started (no block fetched yet)"
            rows.append(("disk cache: block writer", "-", state))
        if cache.get("errors"):
            rows.append(("disk cache: errors", count(cache["errors"]), "failed cache calls (treated as misses)"))
    sections.append((("Caches", "", ""), rows))

    memory = stats.get("memory") or {}
    handles = stats.get("handles") or {}
    if memory or handles:
        rows = []
        if memory:
            rows.append(("read buffers", size(memory.get("read_buffer_used", 0)),
                         f"of {size(memory.get('read_buffer_limit', 0))}; peak {size(memory.get('read_buffer_peak', 0))}"))
            rows.append(("write buffers", size(memory.get("write_buffer_used", 0)),
                         f"of {size(memory.get('write_buffer_limit', 0))}"))
        if handles:
            rows.append(("open files", count(handles.get("files", 0)), ""))
            rows.append(("open directories", count(handles.get("directories", 0)), ""))
            rows.append(("known inodes", count(handles.get("inodes", 0)),
                         f"{count(handles.get('inodes_evicted', 0))} evicted at the --max-cached-entries cap"))
        sections.append((("Memory and handles", "", ""), rows))
    return sections


def _counted(title: str, counts: dict[str, int]) -> Section:
    """A group of counters by name, largest first, with their total."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return (title, count(sum(counts.values())), ""), [(name, count(n), "") for name, n in ordered]


def render(stats: dict[str, Any]) -> str:
    """The answer of ``stats`` for people: identity first, then groups of aligned counters."""
    ident = stats.get("identity") or {}
    prefix = ident.get("prefix") or ""
    source = f"{ident.get('bucket', '?')}/{prefix}" if prefix else str(ident.get("bucket", "?"))
    mode = "read-only" if ident.get("read_only") else "read-write"
    lines = [f"{source} at {ident.get('mountpoint', '?')} ({mode})",
             f"s3xfs {ident.get('version', '?')}, pid {ident.get('pid', '?')}, uid {ident.get('uid', '?')}, "
             f"up {duration(ident.get('uptime', 0))}"]
    extras = []
    if ident.get("endpoint_url"):
        extras.append(f"endpoint {ident['endpoint_url']}")
    elif ident.get("region"):
        extras.append(f"region {ident['region']}")
    if ident.get("cache_dir"):
        extras.append(f"cache {ident['cache_dir']}")
    if extras:
        lines.append(", ".join(extras))

    sections = _sections(stats)
    label_width = max([len(title) for (title, _, _), _ in sections] +
                      [len(label) + 2 for _, rows in sections for label, _, _ in rows])
    value_width = max([len(total) for (_, total, _), _ in sections] +
                      [len(value) for _, rows in sections for _, value, _ in rows])
    for (title, total, note), rows in sections:
        lines.append("")
        lines.append(f"{title:<{label_width}}  {total:>{value_width}}  {note}".rstrip())
        for label, value, detail in rows:
            lines.append(f"  {label:<{label_width - 2}}  {value:>{value_width}}  {detail}".rstrip())
    return "\n".join(lines) + "\n"


# --- the command -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="where an s3xfs bucket is mounted")
    parser.add_argument("--json", action="store_true", help="print the daemon's answer as JSON (all counters)")


def stats_command(args: argparse.Namespace) -> int:
    try:
        reply = ask(find_mount(args.mountpoint))
    except StatsError as exc:
        print(f"s3xfs: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    else:
        sys.stdout.write(render(reply))
    return 0
