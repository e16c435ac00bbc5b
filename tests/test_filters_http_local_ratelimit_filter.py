"""HTTP local rate limit per request: the decision, its stats, the local reply and the header
additions on a fake stream; then real proxies: a burst beyond the bucket gets Envoy's 429 with the
configured and x-ratelimit-* headers, refill lets requests through again, shadow mode (enabled but
not enforced) marks requests instead, and per-route limits apply to their route only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import LayeredRuntime
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from google.protobuf import json_format

from backends import Client, echo_backend, file_access_log, http_proxy, read_lines, wait_until
from proxy_harness import static_cluster
from tulle import stream_info as flags
from tulle.config.loader import parse_message
from tulle.filters.http.base import CONTINUE, STOP
from tulle.filters.http.local_ratelimit.config import LocalRateLimitFactory
from tulle.filters.http.local_ratelimit.filter import LocalRateLimitFilter
from tulle.filters.network.local_ratelimit import filter as bucket_module
from tulle.http.headers import HeaderMap
from tulle.runtime import Runtime, RuntimeFraction
from tulle.server.context import FactoryContext, ServerState
from tulle.stats.store import Store
from tulle.stream_info import StreamInfo

RATELIMIT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ALL = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl"}
NONE = {"default_value": {"numerator": 0, "denominator": "HUNDRED"}, "runtime_key": "rl_enforced"}
LIMITED = {"filter_enabled": ALL, "filter_enforced": ALL}


# --------------------------------------------------------------------------- fake stream


class FakeRoute:
    def __init__(self, configs: dict[str, Any]) -> None:
        self.configs = configs

    def per_filter_config(self, name: str) -> Any:
        return self.configs.get(name)


class FakeStream:
    def __init__(self, route: FakeRoute | None = None) -> None:
        self.route = route
        self.info = StreamInfo("10.0.0.7:4000", "127.0.0.1:10000")
        self.replies: list[dict[str, Any]] = []

    def get_route(self) -> FakeRoute | None:
        return self.route

    def send_local_reply(self, flag: str, **kwargs: Any) -> None:
        self.info.add_flag(flag)
        self.replies.append(kwargs)


class FakeHcm:
    def __init__(self, store: Store, runtime: Runtime | None = None) -> None:
        self.ctx = FactoryContext(stats=store, cluster_manager=None, server=ServerState())  # type: ignore[arg-type]
        if runtime is not None:
            self.ctx.runtime = runtime


def factory(store: Store | None = None, runtime: Runtime | None = None, **fields: Any) -> LocalRateLimitFactory:
    proto = json_format.ParseDict({"stat_prefix": "rl", **fields}, local_rate_limit_pb2.LocalRateLimit())
    return LocalRateLimitFactory(proto, "http_filters[0].typed_config", FakeHcm(store or Store(), runtime))


def request_headers() -> HeaderMap:
    return HeaderMap([(":method", "GET"), (":path", "/"), (":authority", "example.com")])


def run(made: LocalRateLimitFactory, stream: FakeStream | None = None) -> tuple[int, FakeStream, HeaderMap]:
    stream = stream or FakeStream()
    headers = request_headers()
    return LocalRateLimitFilter(stream, made).decode_headers(headers, True), stream, headers


def counters(store: Store, prefix: str = "rl") -> dict[str, int]:
    return {name: store.counters[f"{prefix}.http_local_rate_limit.{name}"].value
            for name in ("enabled", "ok", "rate_limited", "enforced")}


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Unit tests run on a clock that does not move, so no token comes back mid-test."""
    if "integration" not in request.keywords:
        monkeypatch.setattr(bucket_module, "_monotonic", lambda: 500.0)


# --------------------------------------------------------------------------- decisions


def test_enforced_limit_answers_envoys_local_reply() -> None:
    store = Store()
    made = factory(store, token_bucket={"max_tokens": 2, "fill_interval": "60s"}, **LIMITED,
                   response_headers_to_add=[
                       {"header": {"key": "x-local-rate-limit", "value": "true"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                       {"header": {"key": "x-client", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}])
    assert [run(made)[0] for _ in range(2)] == [CONTINUE, CONTINUE]
    status, stream, _ = run(made)
    assert status == STOP
    assert stream.info.response_flags == [flags.RATE_LIMITED]
    assert stream.replies == [{
        "status": 429, "body": b"local_rate_limited", "details": "local_rate_limited",
        "extra_headers": [("x-local-rate-limit", "true"), ("x-client", "10.0.0.7")]}]
    assert counters(store) == {"enabled": 3, "ok": 2, "rate_limited": 1, "enforced": 1}


def test_custom_status_is_used_for_the_local_reply() -> None:
    made = factory(token_bucket={"max_tokens": 1, "fill_interval": "60s"}, status={"code": "ServiceUnavailable"},
                   **LIMITED)
    run(made)
    _, stream, _ = run(made)
    assert stream.replies[0]["status"] == 503
    assert stream.replies[0]["extra_headers"] is None


def test_not_enforced_marks_the_request_and_lets_it_through() -> None:
    store = Store()
    made = factory(store, token_bucket={"max_tokens": 1, "fill_interval": "60s"}, filter_enabled=ALL,
                   filter_enforced=NONE,
                   request_headers_to_add_when_not_enforced=[{"header": {"key": "x-rl-shadow", "value": "hit"}}])
    status, _, headers = run(made)
    assert status == CONTINUE and headers.get("x-rl-shadow") is None  # had a token: untouched
    status, stream, headers = run(made)
    assert status == CONTINUE
    assert headers.get("x-rl-shadow") == "hit"
    assert stream.replies == [] and stream.info.response_flags == []
    assert counters(store) == {"enabled": 2, "ok": 1, "rate_limited": 1, "enforced": 0}


def test_disabled_filter_takes_no_token_and_counts_nothing() -> None:
    store = Store()
    made = factory(store, token_bucket={"max_tokens": 1, "fill_interval": "60s"})  # filter_enabled unset: 0%
    assert all(run(made)[0] == CONTINUE for _ in range(3))
    assert counters(store) == {"enabled": 0, "ok": 0, "rate_limited": 0, "enforced": 0}
    assert made.settings.bucket.remaining_tokens() == 1


def test_enabled_without_a_bucket_lets_everything_through() -> None:
    store = Store()
    made = factory(store, **LIMITED)
    assert all(run(made)[0] == CONTINUE for _ in range(3))
    assert counters(store) == {"enabled": 3, "ok": 3, "rate_limited": 0, "enforced": 0}


def test_x_ratelimit_headers_report_the_bucket_used() -> None:
    made = factory(token_bucket={"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "30s"},
                   enable_x_ratelimit_headers="DRAFT_VERSION_03", **LIMITED)
    seen = []
    for _ in range(3):
        stream = FakeStream()
        flt = LocalRateLimitFilter(stream, made)
        flt.decode_headers(request_headers(), True)
        response = HeaderMap([(":status", "200"), ("x-ratelimit-limit", "upstream")])
        assert flt.encode_headers(response, True) == CONTINUE
        seen.append((response.get_all("x-ratelimit-limit"), response.get("x-ratelimit-remaining"),
                     response.get("x-ratelimit-reset")))
    assert seen == [
        (["upstream", "2"], "1", "0"),  # added beside an upstream's own, as Envoy's addReferenceKey
        (["upstream", "2"], "0", "30"),
        (["upstream", "2"], "0", "30"),
    ]


def test_no_x_ratelimit_headers_when_the_request_was_not_enabled() -> None:
    made = factory(token_bucket={"max_tokens": 2, "fill_interval": "30s"}, enable_x_ratelimit_headers="DRAFT_VERSION_03")
    stream = FakeStream()
    flt = LocalRateLimitFilter(stream, made)
    flt.decode_headers(request_headers(), True)
    response = HeaderMap([(":status", "200")])
    flt.encode_headers(response, True)
    assert "x-ratelimit-limit" not in response


def test_route_settings_replace_the_filters_and_fall_back_to_the_extension_name() -> None:
    store = Store()
    listener_level = factory(store, **LIMITED)  # no bucket: never limits
    route_level = factory(store, stat_prefix="route", token_bucket={"max_tokens": 1, "fill_interval": "60s"},
                          **LIMITED).settings
    by_filter_name = FakeStream(FakeRoute({"envoy.filters.http.local_ratelimit": route_level}))
    assert run(listener_level, by_filter_name)[0] == CONTINUE
    assert run(listener_level, FakeStream(FakeRoute({"envoy.filters.http.local_ratelimit": route_level})))[0] == STOP
    assert counters(store, "route") == {"enabled": 2, "ok": 1, "rate_limited": 1, "enforced": 1}
    assert counters(store) == {"enabled": 0, "ok": 0, "rate_limited": 0, "enforced": 0}

    listener_level.config_name = "edge_rl"  # the name in http_filters wins over the extension name
    other = factory(store, stat_prefix="other", token_bucket={"max_tokens": 5, "fill_interval": "60s"},
                    **LIMITED).settings
    both = FakeRoute({"edge_rl": other, "envoy.filters.http.local_ratelimit": route_level})
    assert run(listener_level, FakeStream(both))[0] == CONTINUE
    assert counters(store, "other")["ok"] == 1
    fallback = FakeRoute({"envoy.filters.http.local_ratelimit": route_level})
    assert run(listener_level, FakeStream(fallback))[0] == STOP
    assert run(listener_level, FakeStream(None))[0] == CONTINUE  # no route: the filter's own settings


def test_runtime_keys_of_filter_enabled_and_enforced_override_their_defaults() -> None:
    runtime = Runtime.from_proto(parse_message({"layers": [{"name": "admin", "admin_layer": {}}]}, LayeredRuntime),
                                 "layered_runtime")
    store = Store()
    made = factory(store, runtime, token_bucket={"max_tokens": 1, "fill_interval": "60s"},
                   filter_enabled={"default_value": {"numerator": 0}, "runtime_key": "rl.on"},
                   filter_enforced={"default_value": {"numerator": 100}, "runtime_key": "rl.enforced"})
    assert isinstance(made.settings.enabled, RuntimeFraction)  # the runtime can change: looked up per request
    assert run(made)[0] == CONTINUE and counters(store)["enabled"] == 0  # the default: 0%
    runtime.merge_admin({"rl.on": "100"})
    assert [run(made)[0] for _ in range(2)] == [CONTINUE, STOP]  # enabled now; the second finds no token
    runtime.merge_admin({"rl.enforced": "numerator: 0\ndenominator: MILLION"})
    assert run(made)[0] == CONTINUE  # limited but no longer enforced
    assert counters(store) == {"enabled": 3, "ok": 1, "rate_limited": 2, "enforced": 1}


# --------------------------------------------------------------------------- real proxies


def ratelimit_filter(**fields: Any) -> dict[str, Any]:
    return {"name": "envoy.filters.http.local_ratelimit",
            "typed_config": {"@type": RATELIMIT_TYPE, "stat_prefix": "http_local_rate_limiter", **fields}}


ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def route_config(routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes or [
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]}


def wait_for_stats(proxy: Any, expected: dict[str, int]) -> dict[str, int | None]:
    def current() -> dict[str, int | None]:
        stats = proxy.stats()
        return {name: stats.get(name) for name in expected}

    wait_until(lambda: current() == expected)
    return current()


@pytest.mark.integration
def test_burst_beyond_the_bucket_gets_429_with_the_headers(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    limiter = ratelimit_filter(
        token_bucket={"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "60s"}, **LIMITED,
        enable_x_ratelimit_headers="DRAFT_VERSION_03",
        response_headers_to_add=[{"append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                  "header": {"key": "x-local-rate-limit", "value": "true"}}])
    with echo_backend("backend") as backend, http_proxy(
            tmp_path, route_config(), [static_cluster("backend", [backend])], http_filters=[limiter, ROUTER],
            access_log=file_access_log(log, "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"),
    ) as (proxy, port), Client(port) as client:
        first, second, third = (client.request("GET", "/burst") for _ in range(3))
        assert (first.status, second.status, third.status) == (200, 200, 429)
        assert first.header("x-served-by") == "backend"
        # 2 tokens per 60 s: 30 s to the next one, Envoy's x-ratelimit-reset once empty
        assert [(m.header("x-ratelimit-limit"), m.header("x-ratelimit-remaining"), m.header("x-ratelimit-reset"))
                for m in (first, second, third)] == [("2", "1", "0"), ("2", "0", "30"), ("2", "0", "30")]
        assert third.body == b"local_rate_limited"
        assert third.header("content-type") == "text/plain"
        assert third.header("x-local-rate-limit") == "true"
        assert third.header("x-served-by") is None  # never reached the backend
        assert first.header("x-local-rate-limit") is None  # only rate limited responses carry it
        assert client.request("GET", "/again").status == 429  # the connection stays usable
        assert wait_for_stats(proxy, {
            "http_local_rate_limiter.http_local_rate_limit.enabled": 4,
            "http_local_rate_limiter.http_local_rate_limit.ok": 2,
            "http_local_rate_limiter.http_local_rate_limit.rate_limited": 2,
            "http_local_rate_limiter.http_local_rate_limit.enforced": 2,
            "http.ingress.downstream_rq_4xx": 2,
            "cluster.backend.upstream_rq_total": 2,
        }) == {
            "http_local_rate_limiter.http_local_rate_limit.enabled": 4,
            "http_local_rate_limiter.http_local_rate_limit.ok": 2,
            "http_local_rate_limiter.http_local_rate_limit.rate_limited": 2,
            "http_local_rate_limiter.http_local_rate_limit.enforced": 2,
            "http.ingress.downstream_rq_4xx": 2,
            "cluster.backend.upstream_rq_total": 2,
        }
        assert read_lines(log, 4)[2:] == ["429 RL local_rate_limited"] * 2


@pytest.mark.integration
def test_refill_lets_requests_through_again(tmp_path: Path) -> None:
    # one token at most: however slow the machine, the refill can never bank a second one; and the
    # request refused after a success must come before its token is back: 2 s leaves room for a
    # loaded machine (the refill is computed from the clock, so sleeping the interval brings it)
    limiter = ratelimit_filter(token_bucket={"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "2s"},
                               **LIMITED)
    with echo_backend("backend") as backend, http_proxy(
            tmp_path, route_config(), [static_cluster("backend", [backend])], http_filters=[limiter, ROUTER],
    ) as (_, port), Client(port) as client:
        assert [client.request("GET", "/").status for _ in range(2)] == [200, 429]
        time.sleep(2.05)  # one token back
        assert [client.request("GET", "/").status for _ in range(2)] == [200, 429]


@pytest.mark.integration
def test_enabled_but_not_enforced_only_marks_requests(tmp_path: Path) -> None:
    limiter = ratelimit_filter(
        token_bucket={"max_tokens": 1, "fill_interval": "60s"}, filter_enabled=ALL, filter_enforced=NONE,
        request_headers_to_add_when_not_enforced=[{"header": {"key": "x-rl-shadow", "value": "over"}}])
    with echo_backend("backend") as backend, http_proxy(
            tmp_path, route_config(), [static_cluster("backend", [backend])], http_filters=[limiter, ROUTER],
    ) as (proxy, port), Client(port) as client:
        first, second = (client.request("GET", "/shadow") for _ in range(2))
        assert (first.status, second.status) == (200, 200)
        assert "x-rl-shadow" not in first.json()["headers"]
        assert second.json()["headers"]["x-rl-shadow"] == "over"
        stats = wait_for_stats(proxy, {"http_local_rate_limiter.http_local_rate_limit.rate_limited": 1,
                                       "http_local_rate_limiter.http_local_rate_limit.enforced": 0})
        assert stats["http_local_rate_limiter.http_local_rate_limit.rate_limited"] == 1
        assert stats["http_local_rate_limiter.http_local_rate_limit.enforced"] == 0


@pytest.mark.integration
def test_per_route_limits_apply_to_their_route_only(tmp_path: Path) -> None:
    # Envoy's usual shape: the filter enabled without a bucket, the limit on one route.
    listener_level = ratelimit_filter(**LIMITED)
    per_route = {"@type": RATELIMIT_TYPE, "stat_prefix": "limited_route",
                 "token_bucket": {"max_tokens": 1, "fill_interval": "60s"}, **LIMITED,
                 "enable_x_ratelimit_headers": "DRAFT_VERSION_03"}
    routes = [{"match": {"prefix": "/limited"}, "route": {"cluster": "backend"},
               "typed_per_filter_config": {"envoy.filters.http.local_ratelimit": per_route}},
              {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]
    with echo_backend("backend") as backend, http_proxy(
            tmp_path, route_config(routes), [static_cluster("backend", [backend])],
            http_filters=[listener_level, ROUTER],
    ) as (proxy, port), Client(port) as client:
        limited = [client.request("GET", "/limited/x") for _ in range(2)]
        assert [m.status for m in limited] == [200, 429]
        assert [m.header("x-ratelimit-limit") for m in limited] == ["1", "1"]
        free = [client.request("GET", "/free") for _ in range(3)]
        assert [m.status for m in free] == [200, 200, 200]
        assert free[0].header("x-ratelimit-limit") is None  # no bucket at the filter level
        expected = {"limited_route.http_local_rate_limit.ok": 1,
                    "limited_route.http_local_rate_limit.enforced": 1,
                    "http_local_rate_limiter.http_local_rate_limit.ok": 3,
                    "http_local_rate_limiter.http_local_rate_limit.rate_limited": 0}
        assert wait_for_stats(proxy, expected) == expected
