"""request_mirror_policies: parsing, sampling, the cluster name, and inheritance route > vhost > route config."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_pb2

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.http.headers import HeaderMap
from tulle.router.route_table import RouteTable

FIELD = "route_config"
ROUTE = f"{FIELD}.virtual_hosts[0].routes[0].route"


def table(config: dict) -> RouteTable:
    return RouteTable.from_proto(parse_message(config, route_pb2.RouteConfiguration), FIELD)


def config_with(policies: list[dict] | None = None, *, vhost: list[dict] | None = None,
                global_: list[dict] | None = None, routes: list[dict] | None = None) -> dict:
    action: dict = {"cluster": "main"}
    if policies is not None:
        action["request_mirror_policies"] = policies
    virtual_host: dict = {"name": "vh", "domains": ["*"],
                          "routes": routes or [{"match": {"prefix": "/"}, "route": action}]}
    if vhost is not None:
        virtual_host["request_mirror_policies"] = vhost
    config: dict = {"name": "rc", "virtual_hosts": [virtual_host]}
    if global_ is not None:
        config["request_mirror_policies"] = global_
    return config


def policies_of(config: dict, index: int = 0) -> tuple:
    return table(config).virtual_hosts[0].routes[index].mirror_policies


def request(**extra: str) -> HeaderMap:
    return HeaderMap([(":method", "GET"), (":path", "/"), (":authority", "example.com")]
                     + [(name.replace("_", "-"), value) for name, value in extra.items()])


def test_no_policies_is_an_empty_tuple() -> None:
    assert policies_of(config_with()) == ()


def test_cluster_policy_mirrors_every_request_by_default() -> None:
    (policy,) = policies_of(config_with([{"cluster": "shadow"}]))
    assert policy.cluster_name(request()) == "shadow"
    assert (policy.numerator, policy.denominator) == (100, 100)
    assert policy.append_suffix is True
    assert all(policy.enabled(value) for value in range(1000))


def test_cluster_header_names_the_cluster_per_request() -> None:
    (policy,) = policies_of(config_with([{"cluster_header": "X-Mirror-Cluster"}]))
    assert policy.cluster_name(request(x_mirror_cluster="m2")) == "m2"
    assert policy.cluster_name(request()) is None
    assert policy.cluster_name(request(x_mirror_cluster="")) is None


@pytest.mark.parametrize(("fraction", "expected"), [
    ({"numerator": 0}, (0, 100)),
    ({"numerator": 25, "denominator": "TEN_THOUSAND"}, (25, 10_000)),
    ({"numerator": 500000, "denominator": "MILLION"}, (500000, 1_000_000)),
])
def test_runtime_fraction_default_value(fraction: dict, expected: tuple[int, int]) -> None:
    (policy,) = policies_of(config_with([{"cluster": "shadow", "runtime_fraction": {"default_value": fraction}}]))
    assert (policy.numerator, policy.denominator) == expected


def test_enabled_is_random_modulo_denominator_below_numerator() -> None:
    (policy,) = policies_of(config_with([{"cluster": "s", "runtime_fraction": {"default_value": {"numerator": 30}}}]))
    assert [value for value in range(200) if policy.enabled(value)] == [*range(30), *range(100, 130)]


def test_zero_percent_never_mirrors() -> None:
    (policy,) = policies_of(config_with([{"cluster": "s", "runtime_fraction": {"default_value": {"numerator": 0}}}]))
    assert not any(policy.enabled(value) for value in range(1000))


def test_runtime_key_and_trace_sampled_are_accepted() -> None:
    # no runtime in scope: the key's lookup always misses and default_value applies; no tracing either
    (policy,) = policies_of(config_with([{
        "cluster": "s", "trace_sampled": False,
        "runtime_fraction": {"runtime_key": "mirror.enabled", "default_value": {"numerator": 7}},
    }]))
    assert (policy.numerator, policy.denominator) == (7, 100)


def test_runtime_key_overrides_the_default_value_per_request() -> None:
    from envoy.config.bootstrap.v3.bootstrap_pb2 import LayeredRuntime

    from tulle.runtime import Runtime, configuring

    runtime = Runtime.from_proto(parse_message({"layers": [{"name": "admin", "admin_layer": {}}]}, LayeredRuntime),
                                 "layered_runtime")
    with configuring(runtime):
        (policy,) = policies_of(config_with([{
            "cluster": "s", "runtime_fraction": {"runtime_key": "mirror.share", "default_value": {"numerator": 0}}}]))
    assert not any(policy.enabled(value) for value in range(200))
    runtime.merge_admin({"mirror.share": "numerator: 25\ndenominator: TEN_THOUSAND"})
    assert [value for value in range(20_000) if policy.enabled(value)] == [*range(25), *range(10_000, 10_025)]


def test_runtime_fraction_needs_default_value() -> None:
    with pytest.raises(ConfigError) as info:
        table(config_with([{"cluster": "s", "runtime_fraction": {"runtime_key": "k"}}]))
    assert info.value.field == f"{ROUTE}.request_mirror_policies[0].runtime_fraction.default_value"


def test_disable_shadow_host_suffix_append() -> None:
    (policy,) = policies_of(config_with([{"cluster": "s", "disable_shadow_host_suffix_append": True}]))
    assert policy.append_suffix is False


@pytest.mark.parametrize(("policy", "message"), [
    ({"cluster": "a", "cluster_header": "x-b"}, "Only one of cluster 'a' or cluster_header 'x-b'"),
    ({"runtime_fraction": {"default_value": {"numerator": 1}}}, "Exactly one of cluster or cluster_header"),
])
def test_exactly_one_cluster_specifier(policy: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        table(config_with([{"cluster": "ok"}, policy]))
    assert info.value.field == f"{ROUTE}.request_mirror_policies[1]"


def test_cluster_header_must_be_header_safe() -> None:
    with pytest.raises(ConfigError) as info:
        table(config_with([{"cluster_header": "x-a\nb"}]))
    assert info.value.field == f"{ROUTE}.request_mirror_policies[0].cluster_header"


@pytest.mark.parametrize("name", ["request_headers_mutations", "host_rewrite_literal"])
def test_unimplemented_fields_are_refused(name: str) -> None:
    value = {"request_headers_mutations": [{"remove": "x-a"}], "host_rewrite_literal": "h"}[name]
    with pytest.raises(UnsupportedFeature) as info:
        table(config_with([{"cluster": "s", name: value}]))
    assert info.value.field == f"{ROUTE}.request_mirror_policies[0].{name}"


def test_virtual_host_policies_apply_to_routes_without_their_own() -> None:
    routes = [
        {"match": {"prefix": "/own"}, "route": {"cluster": "main", "request_mirror_policies": [{"cluster": "r"}]}},
        {"match": {"prefix": "/"}, "route": {"cluster": "main"}},
    ]
    config = config_with(vhost=[{"cluster": "v1"}, {"cluster": "v2"}], global_=[{"cluster": "g"}], routes=routes)
    assert [p.cluster for p in policies_of(config, 0)] == ["r"]  # the most specific list wins whole
    assert [p.cluster for p in policies_of(config, 1)] == ["v1", "v2"]


def test_route_configuration_policies_apply_when_vhost_and_route_have_none() -> None:
    config = config_with(global_=[{"cluster": "g"}])
    assert [p.cluster for p in policies_of(config)] == ["g"]


def test_redirects_and_direct_responses_never_mirror() -> None:
    routes = [{"match": {"prefix": "/r"}, "redirect": {"host_redirect": "x"}},
              {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]
    config = config_with(vhost=[{"cluster": "v"}], routes=routes)
    assert policies_of(config, 0) == () and policies_of(config, 1) == ()


def test_vhost_and_global_policies_are_validated() -> None:
    with pytest.raises(ConfigError) as info:
        table(config_with(vhost=[{}]))
    assert info.value.field == f"{FIELD}.virtual_hosts[0].request_mirror_policies[0]"
    with pytest.raises(ConfigError) as info:
        table(config_with(global_=[{}]))
    assert info.value.field == f"{FIELD}.request_mirror_policies[0]"


def test_named_mirror_clusters_are_referenced_for_validate_clusters() -> None:
    config = config_with([{"cluster": "shadow"}, {"cluster_header": "x-mirror"}])
    assert table(config).referenced_clusters() == {"main", "shadow"}
