"""Client tests: credentials for the boto3 chain come from the environment, as a user's would."""

from __future__ import annotations

import pytest

from tests.support.localzone import ACCESS_KEY, SECRET_KEY


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
