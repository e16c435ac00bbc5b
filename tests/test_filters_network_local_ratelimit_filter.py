"""Token buckets (Envoy's AtomicTokenBucketImpl semantics, lazy refill from the clock), the bucket
shared by forked workers, and the connection limiter's decision and stat."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tulle.filters.network.local_ratelimit import filter as rl
from tulle.filters.network.local_ratelimit.filter import (
    ConnectionRateLimiter,
    SharedTokenBucket,
    TokenBucket,
    envoy_reset_seconds,
    new_token_bucket,
)
from tulle.server.context import DownstreamConnection
from tulle.stats.store import Store


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    fake = FakeClock()
    monkeypatch.setattr(rl, "_monotonic", fake)
    yield fake


def drain(bucket: TokenBucket | SharedTokenBucket, limit: int = 100) -> int:
    taken = 0
    while taken < limit and bucket.consume():
        taken += 1
    return taken


@pytest.mark.parametrize("kind", [TokenBucket, SharedTokenBucket])
def test_bucket_starts_full_and_refuses_once_empty(clock: FakeClock, kind: type) -> None:
    bucket = kind(3, 1, 1.0)
    assert bucket.remaining_tokens() == 3
    assert bucket.reset_seconds() == 0  # tokens left: nothing to wait for
    assert drain(bucket) == 3
    assert bucket.consume() is False
    assert bucket.remaining_tokens() == 0


@pytest.mark.parametrize("kind", [TokenBucket, SharedTokenBucket])
def test_refill_is_continuous_at_tokens_per_fill_over_fill_interval(clock: FakeClock, kind: type) -> None:
    bucket = kind(4, 2, 1.0)  # 2 tokens a second
    assert drain(bucket) == 4
    clock.now += 0.25  # half a token
    assert bucket.consume() is False
    clock.now += 0.25  # the other half: one whole token
    assert bucket.consume() is True
    assert bucket.consume() is False
    clock.now += 1.0
    assert drain(bucket) == 2


@pytest.mark.parametrize("kind", [TokenBucket, SharedTokenBucket])
def test_refill_never_exceeds_max_tokens(clock: FakeClock, kind: type) -> None:
    bucket = kind(2, 5, 1.0)
    bucket.consume()
    clock.now += 3600
    assert drain(bucket) == 2


def test_reset_seconds_is_envoys_truncated_time_to_the_next_token(clock: FakeClock) -> None:
    # Envoy: ceil(1000 / fill_rate) ms, then integer division by 1000
    assert envoy_reset_seconds(2 / 5.0) == 2  # 2500 ms -> 2
    assert envoy_reset_seconds(1 / 60.0) == 60
    assert envoy_reset_seconds(4.0) == 0  # faster than a token a second reports 0
    bucket = TokenBucket(1, 1, 60.0)
    bucket.consume()
    assert bucket.reset_seconds() == 60


def test_new_token_bucket_shares_only_for_several_workers() -> None:
    assert type(new_token_bucket(1, 1, 1.0, workers=1)) is TokenBucket
    assert type(new_token_bucket(1, 1, 1.0, workers=4)) is SharedTokenBucket


def test_shared_bucket_is_one_bucket_across_forked_processes() -> None:
    bucket = SharedTokenBucket(5, 1, 3600.0)  # made before the fork, as the server does
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child worker takes three tokens
        os.close(read_end)
        taken = sum(bucket.consume() for _ in range(3))
        os.write(write_end, bytes([taken]))
        os._exit(0)
    os.close(write_end)
    assert os.read(read_end, 1) == bytes([3])
    os.close(read_end)
    os.waitpid(pid, 0)
    assert bucket.remaining_tokens() == 2  # the parent sees what the child took
    assert drain(bucket) == 2


def test_connection_limiter_counts_each_refusal(clock: FakeClock) -> None:
    store = Store()
    counter = store.counter("local_rate_limit.edge.rate_limited")
    limiter = ConnectionRateLimiter(TokenBucket(2, 1, 10.0), counter, enabled=True)
    connection = DownstreamConnection(("127.0.0.1", 5000), ("127.0.0.1", 80), "edge")
    decisions = [limiter.on_new_connection(connection) for _ in range(4)]
    assert decisions == [True, True, False, False]
    assert counter.value == 2
    clock.now += 10.0
    assert limiter.on_new_connection(connection) is True


def test_disabled_limiter_lets_everything_through_and_keeps_its_tokens(clock: FakeClock) -> None:
    store = Store()
    bucket = TokenBucket(1, 1, 10.0)
    limiter = ConnectionRateLimiter(bucket, store.counter("x"), enabled=False)
    connection = DownstreamConnection(("127.0.0.1", 5000), ("127.0.0.1", 80), "edge")
    assert all(limiter.on_new_connection(connection) for _ in range(5))
    assert bucket.remaining_tokens() == 1
    assert store.counters["x"].value == 0
