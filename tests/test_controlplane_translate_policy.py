"""DestinationRule policy merging: port level, subsets, consistent hash, locality settings."""

from __future__ import annotations

from tulle.controlplane.translate.policy import (
    cluster_policy,
    consistent_hash_for_destination,
    consistent_hash_for_service,
    locality_setting,
    port_traffic_policy,
    subset_labels,
    subset_traffic_policy,
)

RULE = {
    "host": "svc",
    "trafficPolicy": {
        "loadBalancer": {"simple": "ROUND_ROBIN", "consistentHash": {"httpHeaderName": "x-top"}},
        "connectionPool": {"tcp": {"maxConnections": 10}},
        "outlierDetection": {"consecutive5xxErrors": 3},
        "portLevelSettings": [
            {"port": {"number": 9090}, "loadBalancer": {"consistentHash": {"httpHeaderName": "x-port"}}},
        ],
    },
    "subsets": [
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {
            "loadBalancer": {"consistentHash": {"useSourceIp": True}},
            "portLevelSettings": [{"port": {"number": 9090},
                                   "loadBalancer": {"consistentHash": {"httpCookie": {"name": "c"}}}}],
        }},
    ],
}


def test_port_level_settings_replace_the_whole_policy() -> None:
    # Istio: "default values will be applied to fields omitted in port-level traffic policies"
    policy = port_traffic_policy(RULE["trafficPolicy"], 9090)
    assert policy == {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-port"}}}
    top = port_traffic_policy(RULE["trafficPolicy"], 8080)
    assert set(top) == {"loadBalancer", "connectionPool", "outlierDetection"}
    assert port_traffic_policy(None, 80) is None
    # tunnel and proxyProtocol are not port-level settings: a port entry leaves them out too
    tunnel = {"tunnel": {"protocol": "CONNECT"}, "portLevelSettings": [
        {"port": {"number": 80}, "outlierDetection": {}}]}
    assert port_traffic_policy(tunnel, 80) == {"outlierDetection": {}}
    assert port_traffic_policy(tunnel, 81) == {"tunnel": {"protocol": "CONNECT"}}


def test_subset_policy_over_the_rule_policy() -> None:
    base = {"loadBalancer": {"simple": "RANDOM"}, "outlierDetection": {"interval": "1s"}, "tunnel": {"x": 1}}
    merged = subset_traffic_policy(base, {"loadBalancer": {"simple": "LEAST_REQUEST"}}, 80)
    assert merged == {"loadBalancer": {"simple": "LEAST_REQUEST"}, "outlierDetection": {"interval": "1s"},
                      "tunnel": {"x": 1}}
    assert subset_traffic_policy(base, None, 80) is base
    assert subset_traffic_policy(base, {}, 80) == base
    assert subset_traffic_policy(None, {"tls": {"mode": "SIMPLE"}}, 80) == {"tls": {"mode": "SIMPLE"}}
    # the subset's own port level replaces all four port-level components, set or not
    port_level = {"connectionPool": {"tcp": {"maxConnections": 1}},
                  "portLevelSettings": [{"port": {"number": 80}, "connectionPool": {"tcp": {"maxConnections": 2}}}]}
    assert subset_traffic_policy(base, port_level, 80) == {"connectionPool": {"tcp": {"maxConnections": 2}},
                                                           "tunnel": {"x": 1}}
    assert subset_traffic_policy(base, port_level, 81) == {**base, "connectionPool": {"tcp": {"maxConnections": 1}}}


def test_cluster_policy_for_each_cluster() -> None:
    assert cluster_policy(RULE, 8080, "v1")["loadBalancer"]["simple"] == "ROUND_ROBIN"
    assert cluster_policy(RULE, 8080, "v2")["loadBalancer"] == {"consistentHash": {"useSourceIp": True}}
    assert cluster_policy(RULE, 9090, "v2")["loadBalancer"] == {"consistentHash": {"httpCookie": {"name": "c"}}}
    # the rule's port 9090 entry has no connection pool: port 9090 clusters get none (defaults)
    assert "connectionPool" not in cluster_policy(RULE, 9090, "v2")
    assert cluster_policy(RULE, 8080, "v2")["connectionPool"] == {"tcp": {"maxConnections": 10}}
    assert "outlierDetection" not in cluster_policy(RULE, 9090, "v1")
    assert cluster_policy(None, 80) is None
    assert subset_labels(RULE, "v2") == {"version": "v2"}
    assert subset_labels(RULE, "v9") is None


def test_consistent_hash_precedence_for_route_destinations() -> None:
    assert consistent_hash_for_destination(RULE, 9090, "v2") == {"httpCookie": {"name": "c"}}
    assert consistent_hash_for_destination(RULE, None, "v2") == {"useSourceIp": True}
    # the rule's port level only applies when the destination names the port
    assert consistent_hash_for_destination(RULE, 9090, "v1") == {"httpHeaderName": "x-port"}
    assert consistent_hash_for_destination(RULE, None, "v1") == {"httpHeaderName": "x-top"}
    assert consistent_hash_for_destination(None, 80, "") is None


def test_consistent_hash_for_default_routes() -> None:
    assert consistent_hash_for_service(RULE, 9090) == {"httpHeaderName": "x-port"}
    assert consistent_hash_for_service(RULE, 8080) == {"httpHeaderName": "x-top"}
    assert consistent_hash_for_service({"host": "x"}, 80) is None


def test_locality_setting_rule_then_mesh() -> None:
    mesh = {"enabled": True}
    rule_setting = {"failover": [{"from": "a", "to": "b"}]}
    assert locality_setting(mesh, {"loadBalancer": {"localityLbSetting": rule_setting}}) == rule_setting
    assert locality_setting(mesh, {"loadBalancer": {"localityLbSetting": {"enabled": False}}}) is None
    assert locality_setting(mesh, None) == mesh
    assert locality_setting({"enabled": False}, None) is None
    assert locality_setting(None, {"loadBalancer": {}}) is None
