"""The two option presets: Istio's defaults and what today's Tulle proxy accepts."""

from __future__ import annotations

import dataclasses

import pytest

from tulle.controlplane.translate.options import ISTIO_DEFAULTS, TULLE_PROXY_TODAY, TranslateOptions


def test_istio_defaults() -> None:
    assert ISTIO_DEFAULTS.default_http_retries and ISTIO_DEFAULTS.circuit_breaker_defaults
    assert ISTIO_DEFAULTS.connect_timeout == "10s"
    assert ISTIO_DEFAULTS.mesh_locality_lb_setting == {"enabled": True}
    assert (ISTIO_DEFAULTS.forward_proxy_port, ISTIO_DEFAULTS.inbound_port) == (15001, 15006)
    assert {15001, 15006} <= set(ISTIO_DEFAULTS.reserved_ports)


def test_tulle_preset_differs_only_in_what_the_proxy_refuses() -> None:
    differences = {
        field.name for field in dataclasses.fields(TranslateOptions)
        if getattr(ISTIO_DEFAULTS, field.name) != getattr(TULLE_PROXY_TODAY, field.name)
    }
    assert differences == {"default_http_retries", "circuit_breaker_defaults"}


def test_options_are_immutable_and_do_not_share_mutable_defaults() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ISTIO_DEFAULTS.connect_timeout = "1s"  # type: ignore[misc]
    assert TranslateOptions().mesh_locality_lb_setting is not TranslateOptions().mesh_locality_lb_setting
