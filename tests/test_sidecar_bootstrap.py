"""The sidecar's bootstrap: Istio's node identity and metadata, ADS to ``xds-grpc``, and the
proxy's own validator (what ``tulle proxy --mode validate`` runs) accepts it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2

from tulle.cli import main
from tulle.config.loader import parse_message
from tulle.server.context import ServerState
from tulle.server.worker import Worker
from tulle.sidecar.bootstrap import (
    node_id,
    parse_locality,
    sidecar_bootstrap,
    sidecar_identity,
    split_host_port,
)


def reviews_v2(ip: str = "127.0.0.7"):  # noqa: ANN201
    return sidecar_identity("reviews-v2", "bookinfo", ip=ip, labels={"app": "reviews", "version": "v2"},
                            service_account="bookinfo-reviews")


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_bootstrap_builds_a_proxy_worker_with_ads_to_the_control_plane(delta: bool) -> None:
    config = sidecar_bootstrap(reviews_v2(), "127.0.0.1:15010", delta, app_ports={9080: 19081},
                               upstreams={"ratings:9080": 19090}, locality="eu/west-1/a")
    worker = Worker(parse_message(config, bootstrap_pb2.Bootstrap), ServerState())
    assert (worker.xds.cluster, worker.xds.delta) == ("xds-grpc", delta)
    # a sidecar asks for listeners and clusters over ADS, as istio-agent's bootstrap does
    assert worker.xds.lds_config.HasField("ads") and worker.xds.cds_config.HasField("ads")
    assert worker.xds_target() == "127.0.0.1:15010"
    assert not worker.listeners  # every listener comes over ADS
    ads = config["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == ("DELTA_GRPC" if delta else "GRPC")
    assert config["dynamic_resources"]["lds_config"]["ads"] == {}
    assert config["dynamic_resources"]["cds_config"]["ads"] == {}


def test_node_identity_and_metadata_follow_istio() -> None:
    identity = reviews_v2()
    config = sidecar_bootstrap(identity, "10.0.0.1:15010", False, app_ports={9080: 19081, 9443: 19443},
                               upstreams={"ratings:9080": 19090, "mongo:27017": 27017}, locality="eu/west-1")
    node = config["node"]
    assert node["id"] == "sidecar~127.0.0.7~reviews-v2.bookinfo~bookinfo.svc.cluster.local" == identity.id
    assert node["cluster"] == "reviews.bookinfo"
    assert node["locality"] == {"region": "eu", "zone": "west-1"}
    assert node["metadata"] == {
        "TULLE_AGENT": True,
        "NAMESPACE": "bookinfo",
        "LABELS": {"app": "reviews", "version": "v2"},
        "SERVICE_ACCOUNT": "bookinfo-reviews",
        "WORKLOAD_NAME": "reviews-v2",
        "INSTANCE_IPS": "127.0.0.7",
        "UPSTREAMS": {"ratings:9080": 19090, "mongo:27017": 27017},
        "APP_PORTS": {"9080": 19081, "9443": 19443},
    }
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.7", "port_value": 15000}
    endpoint = config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "10.0.0.1", "port_value": 15010}
    # the metadata parses into the proto's Struct as written
    proto = parse_message(config, bootstrap_pb2.Bootstrap)
    assert proto.node.metadata["UPSTREAMS"]["ratings:9080"] == 19090
    assert proto.node.locality.zone == "west-1"


def test_workload_without_app_label_is_its_own_cluster() -> None:
    identity = sidecar_identity("loadgen", ip="127.0.0.9")
    config = sidecar_bootstrap(identity, "127.0.0.1:15010", False, admin_port=15100)
    assert config["node"]["cluster"] == "loadgen.default"
    assert "locality" not in config["node"]
    assert config["node"]["metadata"]["UPSTREAMS"] == {} and config["node"]["metadata"]["APP_PORTS"] == {}
    assert config["admin"]["address"]["socket_address"]["port_value"] == 15100
    assert node_id("10.1.2.3", "a", "b", "example.org") == "sidecar~10.1.2.3~a.b~b.svc.example.org"


def test_tulle_proxy_validate_accepts_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(sidecar_bootstrap(reviews_v2(), "127.0.0.1:15010", True,
                                                     app_ports={9080: 19081}, locality="r/z/s")))
    assert main(["proxy", "-c", str(path), "--mode", "validate"]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize("address", ["15010", ":15010", "host:", "host:0", "host:70000", "host:x"])
def test_malformed_xds_address_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        sidecar_bootstrap(reviews_v2(), address, False)


def test_address_and_locality_parsing() -> None:
    assert split_host_port("[::1]:15010") == ("::1", 15010)
    assert parse_locality("") == {}
    assert parse_locality("us-east1//rack7") == {"region": "us-east1", "sub_zone": "rack7"}
    with pytest.raises(ValueError, match="region/zone/subzone"):
        parse_locality("a/b/c/d")
