"""s3xfs-localzone throughput: is the endpoint ever the bottleneck?

Targets (issue 2): one GET stream of a 1 GiB object at >= 1 GB/s on loopback, and >= 1,500
signed 4 KiB GETs per second over 8 concurrent keep-alive connections.

Baselines measured in the same run, with the same client code:
- ``sendfile server``: a bare HTTP responder that sendfile()s the same file, no parsing, no auth,
  no catalogue: the ceiling of loopback + page cache + this client.
- ``static responder``: answers every request with 4 KiB from memory, no auth: the ceiling of
  this client's request loop on this machine.
"""

from __future__ import annotations

import http.client
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import boto3
from botocore.auth import S3ExpressAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from bench.report import save_result

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "us-west-2"
BUCKET = "bench--usw2-az1--x-s3"
MiB = 1024 * 1024
READ_BUFFER = 8 * MiB  # large reads keep the client out of the way of the server
CONNECTIONS = 8


class Endpoint:
    """s3xfs-localzone in a subprocess, access log off (it is not part of the wire cost)."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "s3xfs.localzone", "--root", str(root), "--bucket", BUCKET, "--access-log", "off"],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip().rsplit(" ", 1)[1]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _serve_static(payload_for: "callable", ready: threading.Event, box: list) -> None:
    """A minimal HTTP/1.1 keep-alive responder (the baselines)."""
    listener = socket.create_server(("127.0.0.1", 0))
    box.append(listener)
    ready.set()
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_static_connection, args=(conn, payload_for), daemon=True).start()


def _static_connection(conn: socket.socket, payload_for) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rfile = conn.makefile("rb")
    try:
        while True:
            line = rfile.readline()
            if not line:
                return
            while rfile.readline() not in (b"\r\n", b""):
                pass
            payload_for(conn)
    except OSError:
        return
    finally:
        conn.close()


def start_baseline(payload_for) -> tuple[str, socket.socket]:
    ready, box = threading.Event(), []
    threading.Thread(target=_serve_static, args=(payload_for, ready, box), daemon=True).start()
    ready.wait()
    listener = box[0]
    return f"http://127.0.0.1:{listener.getsockname()[1]}", listener


def timed_get(url: str, path: str, headers: dict[str, str]) -> tuple[int, float]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port)
    buffer = bytearray(READ_BUFFER)
    view = memoryview(buffer)
    started = time.perf_counter()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {response.read()[:300]!r}")
    total = 0
    while True:
        n = response.readinto(view)
        if not n:
            break
        total += n
    elapsed = time.perf_counter() - started
    conn.close()
    return total, elapsed


def session_signer(s3, url: str):
    """Sign requests the way a zonal client does: session key, token in x-amz-s3session-token."""
    creds = s3.create_session(Bucket=BUCKET, SessionMode="ReadOnly")["Credentials"]
    credentials = Credentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
    auth = S3ExpressAuth(credentials, "s3express", REGION, identity_cache=None)

    def headers_for(path: str) -> dict[str, str]:
        request = AWSRequest(method="GET", url=url + path)
        auth.add_auth(request)
        return dict(request.headers.items())

    return headers_for


def bench_large_get(endpoint: Endpoint, s3, workdir: Path, size: int, repeats: int) -> dict:
    source = workdir / "large.bin"
    with open(source, "wb") as f:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            f.write(block)
    s3.upload_file(str(source), BUCKET, "large.bin")
    path = f"/{BUCKET}/large.bin"
    sign = session_signer(s3, endpoint.url)

    def sendfile_payload(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        with open(source, "rb") as f:
            conn.sendfile(f)

    baseline_url, listener = start_baseline(sendfile_payload)
    ours, base = [], []
    try:
        for _ in range(repeats):
            total, elapsed = timed_get(endpoint.url, path, sign(path))
            assert total == size
            ours.append(size / elapsed)
            total, elapsed = timed_get(baseline_url, path, {})
            base.append(size / elapsed)
    finally:
        listener.close()
    started = time.perf_counter()
    body = s3.get_object(Bucket=BUCKET, Key="large.bin")["Body"]
    while body.read(READ_BUFFER):
        pass
    boto3_rate = size / (time.perf_counter() - started)
    return {"size": size, "localzone": statistics.median(ours), "baseline": statistics.median(base), "boto3": boto3_rate}


def _request_loop(url: str, path: str, sign, deadline: float, counts: list, index: int) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port)
    n = 0
    while time.perf_counter() < deadline:
        conn.request("GET", path, headers=sign(path) if sign else {})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200 or len(data) != 4096:
            raise RuntimeError(f"unexpected reply {response.status} ({len(data)} bytes)")
        n += 1
    conn.close()
    counts[index] = n


def requests_per_second(url: str, path: str, sign, seconds: float) -> float:
    counts = [0] * CONNECTIONS
    deadline = time.perf_counter() + seconds
    threads = [threading.Thread(target=_request_loop, args=(url, path, sign, deadline, counts, i)) for i in range(CONNECTIONS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def bench_small_gets(endpoint: Endpoint, s3, seconds: float, repeats: int) -> dict:
    s3.put_object(Bucket=BUCKET, Key="small.bin", Body=os.urandom(4096))
    path = f"/{BUCKET}/small.bin"
    sign = session_signer(s3, endpoint.url)
    payload = os.urandom(4096)
    baseline_url, listener = start_baseline(
        lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n" + payload))
    ours, base = [], []
    try:
        for _ in range(repeats):
            ours.append(requests_per_second(endpoint.url, path, sign, seconds))
            base.append(requests_per_second(baseline_url, path, sign, seconds))  # same signing cost on the client
    finally:
        listener.close()
    return {"localzone": statistics.median(ours), "baseline": statistics.median(base)}


def main(quick: bool = False) -> dict:
    size = (256 if quick else 1024) * MiB
    repeats = 1 if quick else 5
    with tempfile.TemporaryDirectory(prefix="s3xfs-bench-") as tmp:
        workdir = Path(tmp)
        endpoint = Endpoint(workdir / "root")
        try:
            s3 = boto3.client("s3", endpoint_url=endpoint.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                              aws_secret_access_key=SECRET_KEY, config=Config(max_pool_connections=CONNECTIONS))
            large = bench_large_get(endpoint, s3, workdir, size, repeats)
            small = bench_small_gets(endpoint, s3, 2.0 if quick else 5.0, repeats)
        finally:
            endpoint.stop()
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "large_get": large, "small_gets": small, "repeats": repeats}
    print(f"\ns3xfs-localzone benchmark ({result['machine']}; medians of {repeats} runs)\n")
    print("| workload | s3xfs-localzone | baseline (same run) | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| GET {size // MiB} MiB, 1 stream | {large['localzone'] / 1e9:.2f} GB/s | {large['baseline'] / 1e9:.2f} GB/s "
          f"(bare sendfile server) | {large['localzone'] / large['baseline']:.2f} | >= 1 GB/s |")
    print(f"| signed 4 KiB GETs, {CONNECTIONS} connections | {small['localzone']:.0f} req/s | {small['baseline']:.0f} req/s "
          f"(static responder, same client signing) | {small['localzone'] / small['baseline']:.2f} | >= 1,500 req/s |")
    print(f"\nfor reference: boto3 get_object streaming the same {size // MiB} MiB object reads at "
          f"{large['boto3'] / 1e9:.2f} GB/s (client-bound)")
    save_result("localzone", result)
    return result
