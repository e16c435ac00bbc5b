"""The option presets, and the rule behind TULLE_PROXY_TODAY: config the control plane sends a
Tulle proxy must be accepted by it (tests/proxy_acceptance.py feeds translations through the
proxy's own xDS factories), and it must differ from what Envoy gets only where the proxy still
refuses Envoy's config."""

from __future__ import annotations

import dataclasses

import pytest

from proxy_acceptance import apply_all, refusals, refused_field_names
from test_controlplane_translate_translate import GOLDEN, load_case
from tulle.controlplane.istio.validation import validate
from tulle.controlplane.translate import translate
from tulle.controlplane.translate.options import ISTIO_DEFAULTS, LACKABLE, TULLE_PROXY_TODAY, TranslateOptions

# Golden inputs that use every resilience field of the Istio API, HTTP and TCP.
RESILIENCE_CASES = ("resilience", "resilience-l4")
# What each TULLE_PROXY_TODAY switch keeps away from the proxy.
DEFAULTS_GATES = {"default_http_retries": "retry_policy", "circuit_breaker_defaults": "circuit_breakers"}
# Gates kept although the proxy's factories accept the field, and why (see options.py).
GATED_DESPITE_ACCEPTANCE: dict[str, str] = {}


def test_istio_defaults() -> None:
    assert ISTIO_DEFAULTS.default_http_retries and ISTIO_DEFAULTS.circuit_breaker_defaults
    assert ISTIO_DEFAULTS.proxy_lacks == frozenset()
    assert ISTIO_DEFAULTS.connect_timeout == "10s"
    assert ISTIO_DEFAULTS.mesh_locality_lb_setting == {"enabled": True}
    assert (ISTIO_DEFAULTS.forward_proxy_port, ISTIO_DEFAULTS.inbound_port) == (15001, 15006)
    assert {15001, 15006} <= set(ISTIO_DEFAULTS.reserved_ports)


def test_tulle_preset_differs_only_in_what_the_proxy_refuses() -> None:
    differences = {
        field.name for field in dataclasses.fields(TranslateOptions)
        if getattr(ISTIO_DEFAULTS, field.name) != getattr(TULLE_PROXY_TODAY, field.name)
    }
    assert differences <= {*DEFAULTS_GATES, "proxy_lacks"}
    assert TULLE_PROXY_TODAY.proxy_lacks <= set(LACKABLE)


def test_options_are_immutable_and_do_not_share_mutable_defaults() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ISTIO_DEFAULTS.connect_timeout = "1s"  # type: ignore[misc]
    assert TranslateOptions().mesh_locality_lb_setting is not TranslateOptions().mesh_locality_lb_setting
    assert hash(TULLE_PROXY_TODAY) == hash(dataclasses.replace(TULLE_PROXY_TODAY))


def _translations(options: TranslateOptions) -> dict[str, dict]:
    out = {}
    for case in RESILIENCE_CASES:
        snapshot, proxies = load_case(GOLDEN / case / "input.yaml")
        for name, proxy in proxies.items():
            out[f"{case}/{name}"] = translate(snapshot, proxy, options)
    return out


def test_the_resilience_inputs_are_valid_istio() -> None:
    for case in RESILIENCE_CASES:
        snapshot, _ = load_case(GOLDEN / case / "input.yaml")
        errors = [d for resource in snapshot.resources for d in validate(resource) if d.level == "error"]
        assert errors == []


@pytest.mark.parametrize("target", sorted(_translations(TULLE_PROXY_TODAY)))
def test_a_tulle_proxy_accepts_everything_it_is_sent(target: str) -> None:
    resources = _translations(TULLE_PROXY_TODAY)[target]
    refused, _ = refusals(resources)
    assert refused == {}
    applier = apply_all(resources)  # the xDS applier itself takes every type in ADS order
    assert set(applier.cluster_protos) == set(resources["type.googleapis.com/envoy.config.cluster.v3.Cluster"])


def test_tulle_gets_what_envoy_gets_except_what_the_proxy_still_refuses() -> None:
    """Istio's own config, sent to a Tulle proxy, is refused exactly where TULLE_PROXY_TODAY
    deviates: when a proxy feature lands, its gate must go (and this test says which)."""
    refused_names: set[str] = set()
    for resources in _translations(ISTIO_DEFAULTS).values():
        refused, accepted = refusals(resources)
        refused_names |= refused_field_names(refused)
        apply_all(accepted)
    gated = set(TULLE_PROXY_TODAY.proxy_lacks)
    gated |= {name for option, name in DEFAULTS_GATES.items() if not getattr(TULLE_PROXY_TODAY, option)}
    needless = gated - refused_names - set(GATED_DESPITE_ACCEPTANCE)
    assert {"refused but not gated": refused_names - gated, "gated but accepted": needless} == {
        "refused but not gated": set(), "gated but accepted": set()}
    assert set(GATED_DESPITE_ACCEPTANCE) <= gated  # an exception for a gate that is gone is stale
