"""SessionManager: CreateSession credentials for one directory bucket, always fresh.

Invariants (what holds between two awaits):
- ``_current`` is the newest session CreateSession returned, or None after an invalidation; a
  request is only ever signed with a session that is *usable* (not within the expiry margin).
- At most one CreateSession is in flight (``_inflight``); every caller that needs a session while
  it runs waits for that same attempt. So 32 concurrent first requests make one CreateSession.
- The background task refreshes ahead of expiry, so requests never wait while a usable session
  exists; a failed refresh is retried with exponential backoff while the old session still serves.
- The mode is fixed at construction (ReadOnly for read-only mounts) and never changes.

Margins scale with the session lifetime L, so that the 5-minute sessions of S3 and the 1-2 second
sessions of tests behave alike: refresh when ``min(refresh_before, L/2)`` remain (plus up to
10% jitter, so many mounts don't refresh in lockstep); stop using a session
``min(expiry_margin, L/10)`` before it expires (clock skew and request transit time).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from .errors import ClientError, SessionUnavailable

log = logging.getLogger(__name__)

MODES = ("ReadOnly", "ReadWrite")
REFRESH_BEFORE = 60.0  # aws-c-s3 refreshes when under 60 s remain: 4 of 5 minutes used per session
EXPIRY_MARGIN = 5.0  # aws-c-s3 treats a session as expired 5 s early
RETRY_INITIAL = 0.2  # first backoff after a failed CreateSession
RETRY_MAX = 30.0  # backoff cap: a broken policy is not hammered, a recovered one is noticed soon
MIN_RETRY_INTERVAL = 1.0  # without a usable session, callers fail fast within this after a refusal


@dataclass(frozen=True)
class Session:
    """One set of CreateSession credentials. Secrets never appear in repr or logs."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str = field(repr=False)
    mode: str
    created_at: float  # wall clock when CreateSession was sent
    expires_at: float  # wall clock, from the response's Expiration
    serial: int
    refresh_at: float
    usable_until: float

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.created_at


@dataclass
class SessionStats:
    created: int = 0
    refreshes: int = 0  # sessions created while an earlier one existed or had existed
    failures: int = 0
    invalidations: int = 0
    latency_total: float = 0.0
    latency_max: float = 0.0
    last_error: str | None = None

    def snapshot(self) -> dict[str, float | int | str | None]:
        mean = self.latency_total / self.created if self.created else 0.0
        return {"created": self.created, "refreshes": self.refreshes, "failures": self.failures,
                "invalidations": self.invalidations, "latency_mean": mean, "latency_max": self.latency_max,
                "last_error": self.last_error}


# (mode) -> (access key, secret key, token, expiration as epoch seconds)
CreateSession = Callable[[str], Awaitable[tuple[str, str, str, float]]]


class _Attempt:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.session: Session | None = None
        self.error: ClientError | None = None


class SessionManager:
    def __init__(self, bucket: str, mode: str, create: CreateSession, *, refresh_before: float = REFRESH_BEFORE,
                 expiry_margin: float = EXPIRY_MARGIN, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"session mode must be ReadOnly or ReadWrite, not {mode!r}")
        self.bucket = bucket
        self.mode = mode
        self._create = create
        self._refresh_before = refresh_before
        self._expiry_margin = expiry_margin
        self._clock = clock
        self._rng = rng or random.Random()
        self._current: Session | None = None
        self._inflight: _Attempt | None = None
        self._serial = 0
        self._kick = trio.Event()
        self._last_failure: tuple[float, ClientError] | None = None
        self.stats = SessionStats()

    # --- what requests call --------------------------------------------------------------------

    def peek(self) -> Session | None:
        """The current session if it is usable right now (no await, no refresh)."""
        session = self._current
        if session is not None and self._clock() < session.usable_until:
            return session
        return None

    async def get(self) -> Session:
        """A usable session: at once if one exists, else from the (single) CreateSession in flight."""
        session = self.peek()
        if session is not None:
            return session
        if self._inflight is None and self._last_failure is not None:
            when, error = self._last_failure
            if self._clock() - when < MIN_RETRY_INTERVAL and not error.transient:
                raise self._unavailable(error)  # a refusal: not asked again at once (throttling and
                # lost answers are: the caller's retries back off, and attempts are shared anyway)
        return await self._attempt()

    def invalidate(self, session: Session) -> None:
        """The server refused ``session`` (ExpiredToken, InvalidToken): drop it if still current."""
        if self._current is not None and self._current.serial == session.serial:
            log.info("session %d for %s refused by the server; creating a new one", session.serial, self.bucket)
            self._current = None
            self.stats.invalidations += 1
            self._kick.set()

    # --- background refresh --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a fresh session until cancelled (run it in the client's nursery)."""
        task_status.started()
        backoff = RETRY_INITIAL
        while True:
            session = self._current
            delay = 0.0 if session is None else max(0.0, session.refresh_at - self._clock())
            if delay > 0:
                with trio.move_on_after(delay):
                    await self._kick.wait()
            self._kick = trio.Event()
            try:
                await self._attempt()
                backoff = RETRY_INITIAL
            except ClientError:
                # Keep serving the old session (if still usable); retry later, with jitter.
                await trio.sleep(backoff * (0.5 + self._rng.random()))
                backoff = min(backoff * 2, RETRY_MAX)

    # --- internals -----------------------------------------------------------------------------

    async def _attempt(self) -> Session:
        while True:
            attempt = self._inflight
            if attempt is None:
                attempt = self._inflight = _Attempt()
                try:
                    attempt.session = await self._create_one()
                except ClientError as exc:
                    attempt.error = exc
                finally:
                    self._inflight = None
                    attempt.done.set()
            else:
                await attempt.done.wait()
            if attempt.error is not None:
                raise self._unavailable(attempt.error)
            if attempt.session is not None:
                return attempt.session
            # Neither: the task that was making it was cancelled (a request given up, a failed
            # upload cancelling its sibling parts) before CreateSession answered. Make another.

    async def _create_one(self) -> Session:
        started = self._clock()
        monotonic = trio.current_time()
        try:
            access_key, secret_key, token, expires_at = await self._create(self.mode)
        except ClientError as exc:
            self.stats.failures += 1
            self.stats.last_error = str(exc)
            self._last_failure = (self._clock(), exc)
            log.warning("CreateSession (%s) for %s failed: %s", self.mode, self.bucket, exc)
            raise
        elapsed = trio.current_time() - monotonic
        lifetime = max(expires_at - started, 0.001)
        refresh_lead = min(self._refresh_before, lifetime / 2) + self._rng.uniform(0, lifetime / 10)
        self._serial += 1
        session = Session(access_key, secret_key, token, self.mode, started, expires_at, self._serial,
                          refresh_at=expires_at - refresh_lead,
                          usable_until=expires_at - min(self._expiry_margin, lifetime / 10))
        if self.stats.created:
            self.stats.refreshes += 1
        self.stats.created += 1
        self.stats.latency_total += elapsed
        self.stats.latency_max = max(self.stats.latency_max, elapsed)
        self._last_failure = None
        self._current = session
        log.debug("session %d (%s) for %s valid for %.1f s", session.serial, self.mode, self.bucket, lifetime)
        return session

    def _unavailable(self, error: ClientError) -> ClientError:
        if isinstance(error, SessionUnavailable) or type(error) is not ClientError:
            return error
        return SessionUnavailable(str(error), code=error.code, status=error.status)
