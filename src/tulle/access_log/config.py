"""Build the access loggers of a listener / HCM / tcp_proxy from ``envoy.config.accesslog.v3.AccessLog``.

The logger is chosen by the type of ``typed_config`` (see
``tulle.extensions.registry.ACCESS_LOGGERS``); an unknown type is refused by
name. ``filter`` is compiled once into a predicate checked before formatting.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tulle.access_log.filters import Predicate, compile_filter
from tulle.access_log.loggers import AccessLogger
from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.loader import type_name_of, unpack_any
from tulle.config.support import check_fields
from tulle.extensions.registry import ACCESS_LOGGERS, resolve
from tulle.server.context import FactoryContext
from tulle.stream_info import StreamInfo


class FilteredAccessLog:
    """Logs only the streams the configured filter accepts."""

    __slots__ = ("inner", "predicate")

    def __init__(self, inner: AccessLogger, predicate: Predicate) -> None:
        self.inner = inner
        self.predicate = predicate

    def log(self, info: StreamInfo) -> None:
        if self.predicate(info):
            self.inner.log(info)

    def close(self) -> None:
        self.inner.close()


def build_access_log(proto: Any, field: str, ctx: FactoryContext) -> AccessLogger:
    # ``name`` is a human label: Envoy selects the logger by the typed_config type.
    check_fields(proto, ("typed_config", "filter"), field, ignored=("name",))
    if not proto.HasField("typed_config"):
        raise ConfigError("an access log needs a typed_config", field=join(field, "typed_config"))
    config_field = join(field, "typed_config")
    type_name = type_name_of(proto.typed_config)
    factory = resolve(ACCESS_LOGGERS, type_name)
    if factory is None:
        raise UnsupportedFeature(f"access logger {type_name}", field=config_field)
    predicate = compile_filter(proto.filter, join(field, "filter")) if proto.HasField("filter") else None
    logger: AccessLogger = factory(unpack_any(proto.typed_config, field=config_field), config_field, ctx)
    return FilteredAccessLog(logger, predicate) if predicate is not None else logger


def build_access_logs(protos: Iterable[Any], field: str, ctx: FactoryContext) -> list[AccessLogger]:
    """``access_log`` repeated field -> loggers; on error the ones already opened are closed."""
    loggers: list[AccessLogger] = []
    try:
        for index, proto in enumerate(protos):
            loggers.append(build_access_log(proto, join(field, f"[{index}]"), ctx))
    except BaseException:
        for logger in loggers:
            logger.close()
        raise
    return loggers
