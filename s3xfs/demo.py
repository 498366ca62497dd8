"""``./dev demo``: a local zonal endpoint with a sample directory bucket, mounted read-only.

Real clients nobody here wrote fill the bucket (boto3, which calls CreateSession by itself for an
``--x-s3`` bucket, and the AWS CLI); then ``s3xfs mount --read-only`` shows it as files, and the
endpoint's counters show what the mount did: ReadOnly sessions only, no mutating request.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

BUCKET = "demo--usw2-az1--x-s3"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def shell(*command: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, env=env, check=True)


def stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_localzone/stats") as response:
        return json.loads(response.read())


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="s3xfs-demo-"))
    mountpoint = workdir / "mnt"
    mountpoint.mkdir()
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               AWS_DEFAULT_REGION="us-west-2", AWS_EC2_METADATA_DISABLED="true")
    server = subprocess.Popen(
        [sys.executable, "-m", "s3xfs.localzone", "--bucket", BUCKET, "--root", str(workdir / "root"),
         "--access-log", str(workdir / "access.log")], stdout=subprocess.PIPE, text=True)
    mounted = False
    try:
        assert server.stdout is not None
        banner = server.stdout.readline().strip()
        print(banner)
        url = banner.rsplit(" ", 1)[1]
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-west-2", aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, config=Config(retries={"max_attempts": 2}))

        step(f"boto3 fills the directory bucket {BUCKET} with a small dataset")
        for shard in range(3):
            for n in range(4):
                s3.put_object(Bucket=BUCKET, Key=f"dataset/shard-{shard}/sample-{n}.txt",
                              Body=f"sample {shard}/{n}\n".encode() * (n + 1))
        s3.put_object(Bucket=BUCKET, Key="logs/train.log", Body=b"epoch 1 loss 0.9\n")
        s3.put_object(Bucket=BUCKET, Key="logs/train.log", Body=b"epoch 2 loss 0.5\n", WriteOffsetBytes=17)
        print("appended to logs/train.log with a write offset; directory buckets list unordered:",
              [p["Prefix"] for p in s3.list_objects_v2(Bucket=BUCKET, Prefix="dataset/", Delimiter="/")["CommonPrefixes"]])
        aws = [sys.executable, "-m", "awscli", "--endpoint-url", url]
        subprocess.run(aws + ["s3", "cp", "-", f"s3://{BUCKET}/README.txt"], input=b"uploaded by the AWS CLI\n",
                       env=env, check=True)

        step("s3xfs mounts it read-only (it asks for ReadOnly sessions only)")
        before = stats(url)
        shell(sys.executable, "-m", "s3xfs.cli", "mount", BUCKET, str(mountpoint), "--read-only",
              "--endpoint-url", url, "--region", "us-west-2", env=env)
        mounted = True
        shell("ls", "-l", str(mountpoint))
        shell("find", ".", cwd=mountpoint)
        shell("cat", "logs/train.log", "README.txt", cwd=mountpoint)
        shell("sha256sum", "dataset/shard-1/sample-3.txt", cwd=mountpoint)
        path = mountpoint / "dataset" / "shard-1" / "sample-3.txt"
        print(f"user.s3xfs.etag of {path.name}: {os.getxattr(path, 'user.s3xfs.etag').decode()}")
        try:
            (mountpoint / "new-file").write_text("nope")
        except OSError as exc:
            print(f"writing a file: {errno.errorcode[exc.errno]} ({exc.strerror})")

        step("what the endpoint saw while the mount was used")
        after = stats(url)
        print(json.dumps({
            "ReadOnly sessions": after["sessions"]["ReadOnly"] - before["sessions"]["ReadOnly"],
            "ReadWrite sessions": after["sessions"]["ReadWrite"] - before["sessions"]["ReadWrite"],
            "mutating requests": after["mutating_requests"] - before["mutating_requests"],
            "requests": {op: n - before["requests"].get(op, 0) for op, n in after["requests"].items()
                         if n != before["requests"].get(op, 0)},
        }, indent=2, sort_keys=True))
        return 0
    finally:
        if mounted:
            subprocess.run([sys.executable, "-m", "s3xfs.cli", "unmount", str(mountpoint)], check=False)
            if os.path.ismount(mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        server.terminate()
        server.wait(timeout=15)
        shutil.rmtree(workdir, ignore_errors=True)
        print("\ndemo done: unmounted, endpoint stopped, its temporary files removed")


if __name__ == "__main__":
    raise SystemExit(main())
