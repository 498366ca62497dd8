"""CreateSession credentials: issued, looked up and expired in memory only.

Sessions are deliberately not persisted: a restart of the endpoint invalidates every token, as
a real outage of the session service would, and secrets never touch the disk.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
from dataclasses import dataclass, field

from .principals import Principal

_KEY_ALPHABET = string.ascii_uppercase + string.digits


@dataclass
class Session:
    token: str = field(repr=False)
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str
    mode: str
    principal: Principal
    expires_at: float

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


class SessionStore:
    """Thread-safe table of live sessions, by token and by session access key.

    ``record``: also keep every credential ever issued, for ``--expose-sessions`` (tests that check
    no secret leaks need to know all of them); off by default, so secrets live no longer than needed.
    """

    def __init__(self, ttl: float, *, record: bool = False) -> None:
        self.ttl = ttl
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._issued: list[Session] | None = [] if record else None

    def create(self, principal: Principal, bucket: str, mode: str) -> Session:
        now = time.time()
        session = Session(
            token=secrets.token_urlsafe(96),  # unguessable, and about as long as real tokens
            access_key="ASIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16)),
            secret_key=secrets.token_urlsafe(30),
            bucket=bucket,
            mode=mode,
            principal=principal,
            expires_at=now + self.ttl,
        )
        with self._lock:
            self._purge(now)
            self._by_token[session.token] = session
            if self._issued is not None:
                self._issued.append(session)
        return session

    def issued(self) -> list[dict[str, object]] | None:
        """Every credential issued since start (None unless recording): token, keys, bucket, mode."""
        if self._issued is None:
            return None
        with self._lock:
            return [{"token": s.token, "access_key": s.access_key, "secret_key": s.secret_key, "bucket": s.bucket,
                     "mode": s.mode, "expires_at": s.expires_at} for s in self._issued]

    def get(self, token: str) -> Session | None:
        with self._lock:
            return self._by_token.get(token)

    def expire(self, session: Session) -> None:
        """End one session now (premature-expiry fault)."""
        with self._lock:
            session.expires_at = min(session.expires_at, time.time())

    def expire_all(self) -> int:
        """End every live session now; returns how many there were."""
        now = time.time()
        with self._lock:
            for session in self._by_token.values():
                session.expires_at = min(session.expires_at, now)
            return len(self._by_token)

    def _purge(self, now: float) -> None:
        # Expired sessions stay long enough to answer ExpiredToken (not InvalidToken) for a while.
        horizon = now - max(self.ttl, 60.0) * 10
        stale = [token for token, s in self._by_token.items() if s.expires_at < horizon]
        for token in stale:
            del self._by_token[token]
