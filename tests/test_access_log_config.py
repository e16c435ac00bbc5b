"""build_access_logs: typed_config resolution, filters wired in, refusals with field paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.accesslog.v3 import accesslog_pb2

from tulle.access_log.config import FilteredAccessLog, build_access_logs
from tulle.access_log.loggers import FileAccessLogFactory, StdoutAccessLogFactory
from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.server.context import FactoryContext, ServerState
from tulle.stats.store import Store
from tulle.stream_info import StreamInfo

FIELD = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.access_log"
FILE_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def make_ctx() -> FactoryContext:
    return FactoryContext(stats=Store(), cluster_manager=None, server=ServerState())  # type: ignore[arg-type]


def access_log(data: dict) -> accesslog_pb2.AccessLog:
    return parse_message(data, accesslog_pb2.AccessLog)


def file_log(path: Path, **extra: object) -> dict:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": FILE_TYPE, "path": str(path),
            "log_format": {"text_format_source": {"inline_string": "%RESPONSE_CODE%\n"}},
        },
        **extra,
    }


def stream(code: int) -> StreamInfo:
    info = StreamInfo()
    info.response_code = code
    return info


def test_builds_loggers_by_typed_config_type(tmp_path: Path) -> None:
    loggers = build_access_logs(
        [
            access_log(file_log(tmp_path / "a.log")),
            access_log({"typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"}}),
        ],
        FIELD, make_ctx(),
    )
    assert isinstance(loggers[0], FileAccessLogFactory)
    assert isinstance(loggers[1], StdoutAccessLogFactory)
    loggers[0].log(stream(200))
    for logger in loggers:
        logger.close()
    assert (tmp_path / "a.log").read_text() == "200\n"


def test_filter_decides_what_is_logged(tmp_path: Path) -> None:
    only_errors = {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 500,
                                                                                "runtime_key": "k"}}}}
    (logger,) = build_access_logs([access_log(file_log(tmp_path / "e.log", filter=only_errors))], FIELD, make_ctx())
    assert isinstance(logger, FilteredAccessLog)
    logger.log(stream(200))
    logger.log(stream(503))
    logger.close()
    assert (tmp_path / "e.log").read_text() == "503\n"


def test_unknown_logger_type_is_refused_by_name() -> None:
    proto = access_log({"typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig"}})
    with pytest.raises(UnsupportedFeature) as refused:
        build_access_logs([proto], FIELD, make_ctx())
    assert "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig" in str(refused.value)
    assert refused.value.field == f"{FIELD}[0].typed_config"


def test_missing_typed_config_is_an_error() -> None:
    with pytest.raises(ConfigError) as error:
        build_access_logs([access_log({"name": "envoy.access_loggers.file"})], FIELD, make_ctx())
    assert error.value.field == f"{FIELD}[0].typed_config"


def test_unsupported_filter_is_refused_and_nothing_stays_open(tmp_path: Path) -> None:
    ctx = make_ctx()
    good = access_log(file_log(tmp_path / "ok.log"))
    bad = access_log(file_log(tmp_path / "bad.log", filter={"traceable_filter": {}}))
    with pytest.raises(UnsupportedFeature) as refused:
        build_access_logs([good, bad], FIELD, ctx)
    assert refused.value.field == f"{FIELD}[1].filter.traceable_filter"
    assert ctx.shared == {}  # the first logger was closed again
    assert not (tmp_path / "bad.log").exists()  # the filter is checked before the file is opened


def test_unsupported_logger_field_is_refused_with_path(tmp_path: Path) -> None:
    data = file_log(tmp_path / "x.log")
    data["typed_config"]["log_format"] = {"text_format": "x", "formatters": [{
        "name": "envoy.formatter.req_without_query",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"},
    }]}
    with pytest.raises(UnsupportedFeature) as refused:
        build_access_logs([access_log(data)], FIELD, make_ctx())
    assert refused.value.field == f"{FIELD}[0].typed_config.log_format.formatters"
