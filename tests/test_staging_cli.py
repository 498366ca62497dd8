"""`s3xfs staging`: what it says about the directory it was given."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.mount import s3xfs_command


def staging(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(s3xfs_command("staging", *args), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("action", [["list"], ["discard", "x.s3xfs"]])
def test_a_staging_dir_that_does_not_exist_is_an_error_not_nothing_staged(tmp_path, action):
    result = staging(*action, "--staging-dir", str(tmp_path / "typo"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == f"s3xfs: --staging-dir {tmp_path / 'typo'}: no such directory"


def test_a_file_given_as_staging_dir_is_an_error(tmp_path):
    (tmp_path / "file").write_text("x")
    result = staging("list", "--staging-dir", str(tmp_path / "file"))
    assert result.returncode == 2 and "not a directory" in result.stderr and result.stderr.count("\n") == 1


def test_an_empty_staging_dir_has_nothing_staged(tmp_path):
    directory = tmp_path / "staging"
    directory.mkdir(mode=0o700)
    result = staging("list", "--staging-dir", str(directory))
    assert result.returncode == 0 and result.stdout.strip() == f"{directory}: nothing staged"
