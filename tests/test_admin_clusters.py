"""/clusters and /listeners renderings in Envoy's text and JSON shapes."""

from __future__ import annotations

import json

from tulle.admin.clusters import (
    render_clusters_json,
    render_clusters_text,
    render_listeners_json,
    render_listeners_text,
    split_address,
)

CLUSTERS = [
    {
        "name": "web",
        "type": "STRICT_DNS",
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": {"default": {"max_connections": 10}},
        "hosts": [
            {
                "address": "10.0.0.1:80", "hostname": "web-1", "weight": 2, "priority": 1,
                "region": "r", "zone": "z", "sub_zone": "s", "health_flags": "/failed_active_hc/failed_eds_health",
                "stats": {"cx_total": 5, "cx_active": 1, "rq_total": 9, "rq_success": 8, "rq_error": 1,
                          "rq_active": 0, "rq_timeout": 0, "cx_connect_fail": 2},
            }
        ],
    },
    {"name": "api", "type": "STATIC", "lb_policy": "RANDOM", "hosts": []},
]


def test_text_lines() -> None:
    lines = render_clusters_text(CLUSTERS).splitlines()
    assert lines[0] == "api::default_priority::max_connections::1024"  # clusters sorted by name
    assert "web::default_priority::max_connections::10" in lines
    assert "web::default_priority::max_retries::3" in lines
    assert "web::high_priority::max_connections::1024" in lines
    assert "web::added_via_api::false" in lines
    host = [line.split("::", 2)[2] for line in lines if line.startswith("web::10.0.0.1:80::")]
    stats = host[:8]
    assert stats == sorted(stats)
    assert "cx_connect_fail::2" in stats
    assert host[8:] == [
        "hostname::web-1", "health_flags::/failed_active_hc/failed_eds_health", "weight::2", "region::r",
        "zone::z", "sub_zone::s", "canary::false", "priority::1", "success_rate::-1",
        "local_origin_success_rate::-1",
    ]


def test_json_cluster_statuses() -> None:
    document = json.loads(render_clusters_json(CLUSTERS))
    statuses = document["cluster_statuses"]
    assert [status["name"] for status in statuses] == ["api", "web"]
    web = statuses[1]
    thresholds = web["circuit_breakers"]["thresholds"]
    assert thresholds[0]["max_connections"] == 10 and "priority" not in thresholds[0]
    assert thresholds[1]["priority"] == "HIGH"
    host = web["host_statuses"][0]
    assert host["address"] == {"socket_address": {"address": "10.0.0.1", "port_value": 80}}
    assert host["weight"] == 2 and host["priority"] == 1 and host["hostname"] == "web-1"
    assert host["locality"] == {"region": "r", "zone": "z", "sub_zone": "s"}
    assert host["health_status"] == {"failed_active_health_check": True, "eds_health_status": "UNHEALTHY"}
    stats = {stat["name"]: stat for stat in host["stats"]}
    assert stats["cx_total"]["value"] == "5"  # uint64 is a JSON string, as Envoy prints it
    assert stats["cx_active"]["type"] == "GAUGE"
    assert "type" not in stats["rq_total"]  # COUNTER is the default enum value
    assert [stat["name"] for stat in host["stats"]][-2:] == ["cx_active", "rq_active"]
    assert "success_rate" not in host


def test_listeners() -> None:
    listeners = [{"name": "a", "address": "0.0.0.0:80"}, {"name": "b", "address": "[::1]:81"}]
    assert render_listeners_text(listeners) == "a::0.0.0.0:80\nb::[::1]:81\n"
    statuses = json.loads(render_listeners_json(listeners))["listener_statuses"]
    assert statuses[1] == {"name": "b", "local_address": {"socket_address": {"address": "::1", "port_value": 81}}}


def test_split_address() -> None:
    assert split_address("1.2.3.4:5") == ("1.2.3.4", 5)
    assert split_address("[fe80::1]:443") == ("fe80::1", 443)
