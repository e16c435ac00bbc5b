"""Counters, gauges and histograms named the way Envoy names them.

Hot-path code keeps a reference to a stat object and bumps ``.value``
directly (an attribute add is the cheapest thing Python can do); the store
is only consulted at setup time and by the admin endpoints.
"""

from __future__ import annotations

import bisect
from typing import Any

import cython

# Envoy's default histogram bucket bounds (milliseconds for *_time stats).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)


if not cython.compiled:  # cimported by store.pxd; only compiled branches call them
    PyMem_Malloc = PyMem_Free = None


class Counter:
    if not cython.compiled:
        __slots__ = ("name", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class Gauge:
    """``per_worker=False`` marks a process-wide value that every worker sets alike
    (server.live, membership_total): summed across workers it would be multiplied."""

    if not cython.compiled:
        __slots__ = ("name", "value", "per_worker")

    def __init__(self, name: str, per_worker: bool = True) -> None:
        self.name = name
        self.value = 0
        self.per_worker = per_worker

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def dec(self, amount: int = 1) -> None:
        self.value -= amount

    def set(self, value: int) -> None:
        self.value = value


class TextReadout:
    """A string stat (Envoy's TextReadout), e.g. the version text of the last accepted xDS update."""

    __slots__ = ("name", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = ""

    def set(self, value: str) -> None:
        self.value = value


class Histogram:
    """Cumulative fixed-bucket histogram (Prometheus style) plus sum and count."""

    if not cython.compiled:
        __slots__ = ("name", "buckets", "counts", "sum", "count")

    def __init__(self, name: str, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.name = name
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(buckets) + 1)  # last slot: above the largest bound
        self.sum = 0.0
        self.count = 0
        if cython.compiled:  # the bounds as C doubles, searched without a Python call per record
            self._nbounds = len(self.buckets)
            self._bounds = cython.cast(cython.p_double, PyMem_Malloc((self._nbounds + 1) * cython.sizeof(cython.double)))
            if self._bounds == cython.NULL:
                raise MemoryError()
            for i in range(self._nbounds):
                self._bounds[i] = self.buckets[i]

    def __dealloc__(self) -> None:
        if cython.compiled:
            PyMem_Free(self._bounds)

    @cython.locals(low=cython.Py_ssize_t, high=cython.Py_ssize_t, middle=cython.Py_ssize_t)
    def record(self, value: float) -> None:
        if cython.compiled:  # bisect_left over the C bounds
            low = 0
            high = self._nbounds
            while low < high:
                middle = (low + high) >> 1
                if self._bounds[middle] < value:
                    low = middle + 1
                else:
                    high = middle
            self.counts[low] += 1
        else:
            self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile q (as Envoy's summary does roughly)."""
        if not self.count:
            return None
        target = q * self.count
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            running += n
            if running >= target:
                return bound
        return float("inf")


class Store:
    """All stats of one worker process. Names are full Envoy names."""

    def __init__(self) -> None:
        self.counters: dict[str, Counter] = {}
        self.gauges: dict[str, Gauge] = {}
        self.histograms: dict[str, Histogram] = {}
        self.text_readouts: dict[str, TextReadout] = {}

    def counter(self, name: str) -> Counter:
        stat = self.counters.get(name)
        if stat is None:
            stat = self.counters[name] = Counter(name)
        return stat

    def gauge(self, name: str, *, per_worker: bool = True) -> Gauge:
        stat = self.gauges.get(name)
        if stat is None:
            stat = self.gauges[name] = Gauge(name, per_worker)
        return stat

    def histogram(self, name: str) -> Histogram:
        stat = self.histograms.get(name)
        if stat is None:
            stat = self.histograms[name] = Histogram(name)
        return stat

    def text_readout(self, name: str) -> TextReadout:
        stat = self.text_readouts.get(name)
        if stat is None:
            stat = self.text_readouts[name] = TextReadout(name)
        return stat

    def bind(self, target: object, prefix: str, *, counters: tuple[str, ...] = (), gauges: tuple[str, ...] = (),
             histograms: tuple[str, ...] = (), process_wide: frozenset[str] = frozenset()) -> None:
        """Set ``target.<name>`` to the stat ``<prefix><name>`` for each name: the stats objects that the
        hot path reads as attributes (``process_wide`` gauges are not summed across workers)."""
        for name in counters:
            setattr(target, name, self.counter(prefix + name))
        for name in gauges:
            setattr(target, name, self.gauge(prefix + name, per_worker=name not in process_wide))
        for name in histograms:
            setattr(target, name, self.histogram(prefix + name))

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy, summed across workers by :func:`merge`."""
        return {
            "counters": {n: c.value for n, c in self.counters.items()},
            "gauges": {n: g.value for n, g in self.gauges.items()},
            "process_wide_gauges": [n for n, g in self.gauges.items() if not g.per_worker],
            "histograms": {
                n: {"buckets": list(h.buckets), "counts": list(h.counts), "sum": h.sum, "count": h.count}
                for n, h in self.histograms.items()
            },
            "text_readouts": {n: t.value for n, t in self.text_readouts.items()},
        }


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum worker snapshots: counters, gauges and histogram buckets all add up. A text readout is
    set by one process (the one holding the xDS stream): the first non-empty value wins."""
    out: dict[str, Any] = {"counters": {}, "gauges": {}, "histograms": {}, "process_wide_gauges": [],
                           "text_readouts": {}}
    for index, snap in enumerate(snapshots):
        process_wide = set(snap.get("process_wide_gauges", ()))
        if index == 0:
            out["process_wide_gauges"] = sorted(process_wide)
        for kind in ("counters", "gauges"):
            target = out[kind]
            for name, value in snap[kind].items():
                if name in process_wide:
                    target.setdefault(name, value)  # the same in every worker: take it once
                else:
                    target[name] = target.get(name, 0) + value
        texts = out["text_readouts"]
        for name, text in snap.get("text_readouts", {}).items():
            if not texts.get(name):
                texts[name] = text
        for name, hist in snap["histograms"].items():
            mine = out["histograms"].get(name)
            if mine is None:
                out["histograms"][name] = {
                    "buckets": list(hist["buckets"]), "counts": list(hist["counts"]),
                    "sum": hist["sum"], "count": hist["count"],
                }
            else:
                mine["counts"] = [a + b for a, b in zip(mine["counts"], hist["counts"], strict=True)]
                mine["sum"] += hist["sum"]
                mine["count"] += hist["count"]
    return out
