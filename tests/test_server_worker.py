"""Building a worker from a bootstrap: what it refuses before anything is bound."""

from __future__ import annotations

import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap

from proxy_harness import http_listener, static_cluster
from tulle.config.errors import ConfigError
from tulle.config.loader import parse_message
from tulle.server.context import ServerState
from tulle.server.worker import Worker

RDS = {"route_config_name": "local", "config_source": {"ads": {}}}


def _worker(static: dict, dynamic: dict | None = None) -> Worker:
    document = {"static_resources": static}
    if dynamic is not None:
        document["dynamic_resources"] = dynamic
    return Worker(parse_message(document, Bootstrap), ServerState())


def _ads() -> dict:
    return {"ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}}


def test_rds_over_ads_without_an_ads_stream_is_refused_naming_the_field() -> None:
    listener = http_listener("ingress", 0, {})
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["route_config"]
    hcm["rds"] = RDS
    with pytest.raises(ConfigError) as err:
        _worker({"listeners": [listener]})
    assert err.value.field == ("static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
                               ".rds.config_source")
    assert "ADS must be configured" in str(err.value)
    # with an ADS stream the same listener is fine: its routes are subscribed to
    worker = _worker({"listeners": [listener], "clusters": [static_cluster("xds", [1])]}, _ads())
    assert worker.xds is not None and worker.xds.lds_config is None


def test_eds_over_ads_without_an_ads_stream_is_refused_naming_the_field() -> None:
    eds = {"name": "reviews", "type": "EDS", "connect_timeout": "1s",
           "eds_cluster_config": {"eds_config": {"ads": {}}}}
    with pytest.raises(ConfigError) as err:
        _worker({"clusters": [static_cluster("local", [1]), eds]})
    assert err.value.field == "static_resources.clusters[1].eds_cluster_config.eds_config"
    _worker({"clusters": [static_cluster("xds", [1]), eds]}, _ads())
