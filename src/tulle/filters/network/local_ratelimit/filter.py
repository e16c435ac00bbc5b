"""Token buckets (Envoy's filters/common/local_ratelimit) and the connection limiter.

The bucket follows Envoy's ``AtomicTokenBucketImpl``: it starts full and refills
continuously at ``tokens_per_fill / fill_interval`` tokens a second, capped at
``max_tokens``. Nothing ticks: the refill since the last use is computed from the
monotonic clock when a token is asked for, so an idle bucket costs nothing.

Envoy's bucket is shared by all its worker threads ("the rate limits are applied per
Envoy process"). Tulle's workers are processes, so with ``--concurrency`` above 1 the
bucket lives in shared memory mapped before the workers fork (:class:`SharedTokenBucket`).
"""

from __future__ import annotations

import math
import mmap
import time
from typing import TYPE_CHECKING

import cython

if TYPE_CHECKING:
    from tulle.runtime import RuntimeFlag
    from tulle.server.context import DownstreamConnection
    from tulle.stats.store import Counter

_monotonic = time.monotonic

# Slots of the shared bucket's state (float64 each).
_TOKENS = 0
_LAST_FILL = 1


def envoy_reset_seconds(fill_rate: float) -> int:
    """``x-ratelimit-reset`` of an empty bucket, computed as Envoy computes it.

    Envoy rounds the time to the next token up to whole milliseconds, then divides
    by 1000 in integer arithmetic (RateLimitTokenBucket::resetSeconds), so a bucket
    refilling faster than a token a second reports 0. Dashboards read Envoy's number.
    """
    return math.ceil(1000.0 / fill_rate) // 1000


class TokenBucket:
    """One process's bucket: plain attributes, no locking (a worker is single-threaded)."""

    if not cython.compiled:
        __slots__ = ("max_tokens", "fill_rate", "tokens", "last_fill", "empty_reset_seconds", "__weakref__")

    def __init__(self, max_tokens: int, tokens_per_fill: int, fill_interval: float) -> None:
        self.max_tokens = max_tokens
        self.fill_rate = tokens_per_fill / fill_interval
        self.tokens = float(max_tokens)
        self.last_fill = _monotonic()
        self.empty_reset_seconds = envoy_reset_seconds(self.fill_rate)

    @cython.locals(now=cython.double, tokens=cython.double)
    def consume(self) -> bool:
        """Take one token if there is a whole one."""
        now = _monotonic()
        tokens = self.tokens + (now - self.last_fill) * self.fill_rate
        if tokens > self.max_tokens:
            tokens = self.max_tokens
        self.last_fill = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

    def remaining_tokens(self) -> int:
        # As Envoy: what the last consume left, without refilling first.
        return int(self.tokens)

    def reset_seconds(self) -> int:
        return 0 if self.tokens >= 1.0 else self.empty_reset_seconds


class SharedTokenBucket:
    """The same bucket for every worker process.

    An anonymous ``MAP_SHARED`` mapping made before the fork is the same memory in
    every child; a process-shared semaphore serialises the read-modify-write (when
    uncontended it is an atomic operation in user space, no system call).
    """

    __slots__ = ("max_tokens", "fill_rate", "empty_reset_seconds", "_memory", "_state", "_lock", "__weakref__")

    def __init__(self, max_tokens: int, tokens_per_fill: int, fill_interval: float) -> None:
        import multiprocessing  # only multi-worker configs with a rate limit pay for the import

        self.max_tokens = max_tokens
        self.fill_rate = tokens_per_fill / fill_interval
        self.empty_reset_seconds = envoy_reset_seconds(self.fill_rate)
        self._memory = mmap.mmap(-1, mmap.PAGESIZE)  # fileno -1: anonymous, MAP_SHARED by default
        self._state = memoryview(self._memory).cast("d")
        self._state[_TOKENS] = float(max_tokens)
        self._state[_LAST_FILL] = _monotonic()
        # the fork context's semaphore is unlinked at once: no resource-tracker process, nothing
        # left in /dev/shm, and the forked workers share it through the inherited mapping
        self._lock = multiprocessing.get_context("fork").Lock()

    def consume(self) -> bool:
        state = self._state
        with self._lock:
            now = _monotonic()
            tokens = state[_TOKENS] + (now - state[_LAST_FILL]) * self.fill_rate
            if tokens > self.max_tokens:
                tokens = self.max_tokens
            state[_LAST_FILL] = now
            if tokens < 1.0:
                state[_TOKENS] = tokens
                return False
            state[_TOKENS] = tokens - 1.0
            return True

    def remaining_tokens(self) -> int:
        return int(self._state[_TOKENS])  # one aligned 8-byte read: no lock needed to read it whole

    def reset_seconds(self) -> int:
        return 0 if self._state[_TOKENS] >= 1.0 else self.empty_reset_seconds


Bucket = TokenBucket | SharedTokenBucket


def new_token_bucket(max_tokens: int, tokens_per_fill: int, fill_interval: float, *, workers: int) -> Bucket:
    """A bucket the ``workers`` worker processes share (a plain one for a single worker)."""
    if workers > 1:
        return SharedTokenBucket(max_tokens, tokens_per_fill, fill_interval)
    return TokenBucket(max_tokens, tokens_per_fill, fill_interval)


class ConnectionRateLimiter:
    """Envoy's network local_ratelimit ``onNewConnection``: each accepted connection takes
    one token; without one the listener closes it at once (NoFlush), before any other filter."""

    __slots__ = ("bucket", "rate_limited", "enabled")

    def __init__(self, bucket: Bucket, rate_limited: Counter, enabled: bool | RuntimeFlag) -> None:
        self.bucket = bucket
        self.rate_limited = rate_limited
        self.enabled = enabled

    def on_new_connection(self, connection: DownstreamConnection) -> bool:
        if not self.enabled or self.bucket.consume():
            return True
        self.rate_limited.value += 1
        return False
