"""Retry policy for transient failures (throttling, 5xx, dropped connections).

Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"),
bounded both in attempts and in total time so that an outage surfaces as an error, not a hang.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6  # 1 try + 5 retries: rides out brief throttling (p(6 x 5% SlowDown) ~ 1e-8)
    base_delay: float = 0.05  # S3 Express answers in milliseconds: start small
    max_delay: float = 2.0  # one sleep never exceeds this
    max_elapsed: float = 20.0  # then give up: the filesystem answers EIO instead of hanging

    def delay(self, attempt: int, rng: random.Random = random._inst) -> float:  # type: ignore[attr-defined]
        """Sleep before retry number ``attempt`` (1-based): uniform in [0, min(cap, base * 2**attempt)]."""
        return rng.uniform(0, min(self.max_delay, self.base_delay * (2 ** attempt)))
