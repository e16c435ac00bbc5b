"""Envoy's xDS stats: the management server's and each subscription's.

``control_plane.*`` describes the ADS stream. Every subscription has Envoy's
subscription statistics under its own prefix: ``cluster_manager.cds.``,
``listener_manager.lds.``, ``http.<stat_prefix>.rds.<route_config_name>.`` and
``cluster.<name>.`` (EDS). Only the process holding the ADS stream writes them,
so the gauges and text readouts are process-wide (not summed across workers).
"""

from __future__ import annotations

import time

import xxhash

from tulle.stats.store import Counter, Gauge, Histogram, Store, TextReadout

SUBSCRIPTION_COUNTERS = ("init_fetch_timeout", "update_attempt", "update_failure", "update_rejected",
                         "update_success")
SUBSCRIPTION_GAUGES = ("update_time", "version")
CDS_PREFIX = "cluster_manager.cds."
LDS_PREFIX = "listener_manager.lds."


def version_hash(version_info: str) -> int:
    """The ``version`` gauge: Envoy's HashUtil::xxHash64 of the version string (seed 0)."""
    return xxhash.xxh64_intdigest(version_info.encode())


def rds_prefix(stat_prefix: str, route_config_name: str) -> str:
    """``http.<stat_prefix>.rds.<route_config_name>.`` with ``:`` made ``_``, as Envoy names it."""
    return f"http.{stat_prefix}.rds.{route_config_name.replace(':', '_')}."


def _now_ms() -> int:
    return int(time.time() * 1000)


class ControlPlaneStats:
    """``control_plane.*``. Tulle has no request rate limit (``rate_limit_settings`` is refused),
    so ``rate_limit_enforced`` and ``pending_requests`` stay 0, as in Envoy without one."""

    connected_state: Gauge
    pending_requests: Gauge
    rate_limit_enforced: Counter

    def __init__(self, store: Store) -> None:
        store.bind(self, "control_plane.", counters=("rate_limit_enforced",),
                   gauges=("connected_state", "pending_requests"),
                   process_wide=frozenset({"connected_state", "pending_requests"}))
        self.identifier: TextReadout = store.text_readout("control_plane.identifier")


class SubscriptionStats:
    """One subscription's stats, with the events that move them as Envoy's GrpcSubscriptionImpl does."""

    init_fetch_timeout: Counter
    update_attempt: Counter
    update_failure: Counter
    update_rejected: Counter
    update_success: Counter
    update_time: Gauge
    version: Gauge
    update_duration: Histogram

    def __init__(self, store: Store, prefix: str) -> None:
        self.prefix = prefix
        store.bind(self, prefix, counters=SUBSCRIPTION_COUNTERS, gauges=SUBSCRIPTION_GAUGES,
                   histograms=("update_duration",), process_wide=frozenset(SUBSCRIPTION_GAUGES))
        self.version_text: TextReadout = store.text_readout(prefix + "version_text")

    def started(self) -> None:
        """The subscription was started (or its interest changed)."""
        self.update_attempt.value += 1

    def accepted(self, version_info: str, duration_ms: float, *, attempt: bool = True) -> None:
        """An update was applied (``attempt=False``: delta already counted the attempt before applying)."""
        self.update_success.value += 1
        if attempt:
            self.update_attempt.value += 1
        self.update_time.set(_now_ms())
        self.version.set(version_hash(version_info))
        self.version_text.set(version_info)
        self.update_duration.record(duration_ms)

    def rejected(self) -> None:
        self.update_rejected.value += 1
        self.update_attempt.value += 1

    def failed(self) -> None:
        """The stream to the management server could not be established or was closed."""
        self.update_failure.value += 1
        self.update_attempt.value += 1

    def timed_out(self) -> None:
        """Nothing arrived within the config source's ``initial_fetch_timeout``."""
        self.init_fetch_timeout.value += 1
        self.update_attempt.value += 1


class RdsStats(SubscriptionStats):
    """RDS adds ``config_reload`` (the route table really changed), its time, and ``update_empty``."""

    config_reload: Counter
    update_empty: Counter
    config_reload_time_ms: Gauge

    def __init__(self, store: Store, prefix: str) -> None:
        super().__init__(store, prefix)
        store.bind(self, prefix, counters=("config_reload", "update_empty"), gauges=("config_reload_time_ms",),
                   process_wide=frozenset({"config_reload_time_ms"}))

    def reloaded(self) -> None:
        self.config_reload.value += 1
        self.config_reload_time_ms.set(_now_ms())


class EdsStats(SubscriptionStats):
    """An EDS cluster's subscription stats live in the cluster's scope, next to ``update_empty``: an
    update without this cluster's assignment, after which it keeps its endpoints."""

    update_empty: Counter

    def __init__(self, store: Store, prefix: str) -> None:
        super().__init__(store, prefix)
        store.bind(self, prefix, counters=("update_empty",))
