"""Fault and latency injection, settable at start (CLI) and at run time (``/_localzone/faults``).

Each rate is a probability per S3 request (admin requests are never faulted). Decisions come
from one seeded RNG so a run with ``--fault-seed`` is repeatable.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import asdict, dataclass, fields


@dataclass
class FaultConfig:
    slowdown_rate: float = 0.0        # 503 SlowDown
    internal_error_rate: float = 0.0  # 500 InternalError
    drop_rate: float = 0.0            # connection reset instead of (or in the middle of) a response
    expire_token_rate: float = 0.0    # the request's session expires now: 400 ExpiredToken
    latency_ms: float = 0.0           # first-byte delay added to every S3 response
    latency_jitter_ms: float = 0.0    # plus a uniform random 0..jitter
    outage: bool = False              # every S3 request gets its connection reset (endpoint "down")

    def update(self, values: object) -> None:
        """Apply a partial update, all or nothing; raises ValueError naming the bad field."""
        if not isinstance(values, dict):
            raise ValueError("expected a JSON object of fault settings")
        known = {f.name for f in fields(self)}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"unknown fault setting {name!r}; known: {', '.join(sorted(known))}")
            if name == "outage":
                if not isinstance(value, bool):
                    raise ValueError("outage must be true or false")
            else:
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                    raise ValueError(f"{name} must be a non-negative number")
                if name.endswith("_rate") and value > 1:
                    raise ValueError(f"{name} is a probability between 0 and 1")
        for name, value in values.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class FaultInjector:
    """Draws fault decisions for requests from the current configuration."""

    def __init__(self, config: FaultConfig, seed: int | None) -> None:
        self.config = config
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def draw(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._random.random() < rate

    def latency(self) -> float:
        """Seconds of first-byte delay for the next response."""
        cfg = self.config
        if cfg.latency_ms <= 0 and cfg.latency_jitter_ms <= 0:
            return 0.0
        with self._lock:
            jitter = self._random.uniform(0, cfg.latency_jitter_ms) if cfg.latency_jitter_ms else 0.0
        return (cfg.latency_ms + jitter) / 1000.0
