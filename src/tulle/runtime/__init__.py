"""Envoy's layered runtime: values operators change without a config reload.

``Runtime`` (loader.py) holds the layers and the current immutable ``Snapshot``; features
compile their runtime-keyed settings once with the helpers of features.py, which cost
nothing per request unless the runtime can actually change. See docs/runtime.md.

Config built while a worker's route tables are compiled (route matches, mirror policies,
per-route filter configs) finds that worker's runtime with :func:`in_scope`; the HTTP
connection manager sets it with :func:`configuring` around the build.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tulle.runtime.entry import Entry, Fraction
from tulle.runtime.features import (
    RuntimeFlag,
    RuntimeFraction,
    RuntimeNumber,
    feature_flag,
    fractional_percent,
    runtime_fractional_percent,
    runtime_number,
)
from tulle.runtime.loader import NoAdminLayer, Runtime
from tulle.runtime.snapshot import Snapshot

__all__ = [
    "Entry", "Fraction", "NoAdminLayer", "Runtime", "RuntimeFlag", "RuntimeFraction", "RuntimeNumber", "Snapshot",
    "configuring", "feature_flag", "fractional_percent", "in_scope", "runtime_fractional_percent", "runtime_number",
]

# No layered_runtime: no layer, never changes (shared; nothing can modify it)
NO_RUNTIME = Runtime()

_scope: ContextVar[Runtime] = ContextVar("tulle_runtime_scope", default=NO_RUNTIME)


def in_scope() -> Runtime:
    """The runtime of the worker whose config is being built (no runtime outside a build)."""
    return _scope.get()


@contextmanager
def configuring(runtime: Runtime) -> Iterator[None]:
    token = _scope.set(runtime)
    try:
        yield
    finally:
        _scope.reset(token)
