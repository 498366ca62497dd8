"""Run s3xfs-localzone as a subprocess for a test, and always stop it (by PID) afterwards."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "us-west-2"
DIRECTORY_BUCKET = "data--usw2-az1--x-s3"
GENERAL_BUCKET = "general-bucket"


class LocalZone:
    """A running endpoint: its URL, its stats, boto3 clients for it, and a way to stop it."""

    def __init__(self, workdir: Path, *args: str, root: Path | None = None) -> None:
        self.workdir = workdir
        self.root = root or workdir / "root"
        self.log_path = workdir / f"localzone-{time.monotonic_ns()}.log"
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.banner: list[str] = []

    def start(self, timeout: float = 30.0) -> "LocalZone":
        command = [sys.executable, "-m", "s3xfs.localzone", "--port", "0", "--root", str(self.root),
                   "--access-log", str(self.log_path), *self.args]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=open(self.workdir / "localzone.stderr", "ab"))
        assert self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            if time.monotonic() > deadline or not selector.select(deadline - time.monotonic()):
                self.stop()
                raise RuntimeError("s3xfs-localzone did not print its listening line in time")
            chunk = os.read(self.proc.stdout.fileno(), 1)
            if not chunk:
                raise RuntimeError(f"s3xfs-localzone exited early: {(self.workdir / 'localzone.stderr').read_text()}")
            line += chunk
        self.banner = [line.decode().rstrip("\n")]
        prefix = "s3xfs-localzone listening on "
        assert self.banner[0].startswith(prefix), self.banner[0]
        self.url = self.banner[0][len(prefix):]
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    # --- admin API ------------------------------------------------------------------------------
    def admin(self, name: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if payload is None and name in ("stats", "faults", "health") else json.dumps(payload or {}).encode()
        request = urllib.request.Request(f"{self.url}/_localzone/{name}", data=data, method="GET" if data is None else "POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return self.admin("stats")

    def reset_stats(self) -> None:
        self.admin("reset", {})

    def set_faults(self, **values: Any) -> dict[str, Any]:
        return self.admin("faults", values)

    def expire_sessions(self) -> int:
        return int(self.admin("expire-sessions", {})["expired"])

    def access_log(self) -> list[list[str]]:
        if not self.log_path.exists():
            return []
        return [line.split("\t") for line in self.log_path.read_text().splitlines() if line]

    # --- clients --------------------------------------------------------------------------------
    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, **config: Any):
        options: dict[str, Any] = {"retries": {"total_max_attempts": 1, "mode": "standard"}}  # no hidden retries
        options.update(config)
        return boto3.session.Session().client(
            "s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key, config=Config(**options))

    def env(self) -> dict[str, str]:
        """Environment for CLI clients (awscli) pointed at this endpoint."""
        env = dict(os.environ)
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION,
                   AWS_ENDPOINT_URL=self.url, AWS_EC2_METADATA_DISABLED="true",
                   AWS_CONFIG_FILE=str(self.workdir / "no-aws-config"),
                   AWS_SHARED_CREDENTIALS_FILE=str(self.workdir / "no-aws-credentials"))
        return env

    # --- lifecycle ------------------------------------------------------------------------------
    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the process we started (by PID); returns its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> "LocalZone":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
