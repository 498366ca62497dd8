"""``./dev demo``: start the local zonal endpoint with a sample directory bucket and use it.

Real clients nobody here wrote do the work: boto3 (which calls CreateSession by itself for an
``--x-s3`` bucket) and the AWS CLI. The endpoint's own counters then show what happened.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import boto3
from botocore.config import Config

BUCKET = "demo--usw2-az1--x-s3"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    workdir = tempfile.mkdtemp(prefix="s3xfs-demo-")
    server = subprocess.Popen(
        [sys.executable, "-m", "s3xfs.localzone", "--bucket", BUCKET, "--root", f"{workdir}/root",
         "--access-log", f"{workdir}/access.log"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        banner = server.stdout.readline().strip()
        print(banner)
        url = banner.rsplit(" ", 1)[1]
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-west-2", aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, config=Config(retries={"max_attempts": 2}))

        step(f"boto3: upload a small dataset into the directory bucket {BUCKET}")
        for shard in range(3):
            for n in range(4):
                s3.put_object(Bucket=BUCKET, Key=f"dataset/shard-{shard}/sample-{n}.txt", Body=f"sample {shard}/{n}\n".encode())
        listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="dataset/", Delimiter="/")
        print("directories under dataset/ (directory buckets list them unordered):",
              [p["Prefix"] for p in listing.get("CommonPrefixes", [])])

        step("boto3: append to an object with a write offset, then rename it atomically")
        s3.put_object(Bucket=BUCKET, Key="logs/train.log", Body=b"epoch 1 loss 0.9\n")
        size = s3.head_object(Bucket=BUCKET, Key="logs/train.log")["ContentLength"]
        s3.put_object(Bucket=BUCKET, Key="logs/train.log", Body=b"epoch 2 loss 0.5\n", WriteOffsetBytes=size)
        s3.rename_object(Bucket=BUCKET, Key="logs/run-1.log", RenameSource="logs/train.log")
        print(s3.get_object(Bucket=BUCKET, Key="logs/run-1.log")["Body"].read().decode(), end="")

        step("aws cli: create a ReadOnly session explicitly, then list and copy with `aws s3`")
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                   AWS_DEFAULT_REGION="us-west-2", AWS_EC2_METADATA_DISABLED="true")
        aws = [sys.executable, "-m", "awscli", "--endpoint-url", url]
        session = json.loads(subprocess.run(aws + ["s3api", "create-session", "--bucket", BUCKET, "--session-mode", "ReadOnly"],
                                            env=env, check=True, capture_output=True, text=True).stdout)
        print("session expires at", session["Credentials"]["Expiration"], "(token and secret not shown)")
        subprocess.run(aws + ["s3", "ls", "--recursive", f"s3://{BUCKET}/dataset/shard-0/"], env=env, check=True)
        subprocess.run(aws + ["s3", "cp", f"s3://{BUCKET}/dataset/shard-1/sample-2.txt", "-"], env=env, check=True)

        step("the endpoint's counters (GET /_localzone/stats)")
        with urllib.request.urlopen(f"{url}/_localzone/stats") as response:
            stats = json.loads(response.read())
        print(json.dumps({k: stats[k] for k in ("requests", "sessions", "bytes_in", "bytes_out")}, indent=2, sort_keys=True))
        print(f"\naccess log: {workdir}/access.log (removed at exit); the mount itself arrives with the next issues.")
        return 0
    finally:
        server.terminate()
        server.wait(timeout=15)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
