"""File / stdout / stderr loggers: buffering, periodic and size flushes, sharing, close."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from google.protobuf import json_format

from tulle.access_log.loggers import (
    FLUSH_INTERVAL_SECONDS,
    FLUSH_SIZE_BYTES,
    FileAccessLogFactory,
    StderrAccessLogFactory,
    StdoutAccessLogFactory,
)
from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.server.context import FactoryContext, ServerState
from tulle.stats.store import Store
from tulle.stream_info import StreamInfo


class RecordingLoop:
    """Stands in for the event loop: records the flush timer instead of running it."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, Callable[[], None], RecordingHandle]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> RecordingHandle:
        handle = RecordingHandle()
        self.timers.append((delay, callback, handle))
        return handle

    def is_closed(self) -> bool:
        return False

    def fire(self) -> None:
        timers, self.timers = self.timers, []
        for _, callback, handle in timers:
            if not handle.cancelled:
                callback()


class RecordingHandle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def make_ctx(loop: Any = None) -> FactoryContext:
    return FactoryContext(stats=Store(), cluster_manager=None, server=ServerState(), loop=loop)  # type: ignore[arg-type]


def file_proto(path: Path, **extra: Any) -> file_pb2.FileAccessLog:
    return json_format.ParseDict({"path": str(path), **extra}, file_pb2.FileAccessLog())


def info(code: int) -> StreamInfo:
    stream = StreamInfo()
    stream.response_code = code
    return stream


def test_lines_are_buffered_until_the_periodic_flush(tmp_path: Path) -> None:
    loop = RecordingLoop()
    path = tmp_path / "access.log"
    logger = FileAccessLogFactory(
        file_proto(path, log_format={"text_format_source": {"inline_string": "%RESPONSE_CODE%\n"}}),
        "f", make_ctx(loop),
    )
    logger.log(info(200))
    logger.log(info(404))
    assert path.read_text() == ""
    assert [delay for delay, _, _ in loop.timers] == [FLUSH_INTERVAL_SECONDS]  # one timer for both lines
    loop.fire()
    assert path.read_text() == "200\n404\n"
    logger.log(info(500))
    loop.fire()
    assert path.read_text() == "200\n404\n500\n"
    logger.close()


def test_large_buffers_flush_immediately(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    logger = FileAccessLogFactory(
        file_proto(path, log_format={"text_format_source": {"inline_string": "x" * 1023 + "\n"}}),
        "f", make_ctx(RecordingLoop()),
    )
    lines = FLUSH_SIZE_BYTES // 1024
    for _ in range(lines):
        logger.log(info(200))
    assert path.stat().st_size == lines * 1024
    logger.close()


def test_close_flushes_and_releases_the_file(tmp_path: Path) -> None:
    path = tmp_path / "close.log"
    ctx = make_ctx(RecordingLoop())
    logger = FileAccessLogFactory(file_proto(path), "f", ctx)
    logger.log(info(200))
    assert ctx.shared
    logger.close()
    assert '" 200 - 0 0 ' in path.read_text()  # the default format
    assert ctx.shared == {}
    logger.close()  # idempotent


def test_loggers_share_one_open_file_per_path(tmp_path: Path) -> None:
    path = tmp_path / "shared.log"
    ctx = make_ctx(RecordingLoop())
    fmt = {"log_format": {"text_format_source": {"inline_string": "%RESPONSE_CODE%\n"}}}
    first = FileAccessLogFactory(file_proto(path, **fmt), "a", ctx)
    second = FileAccessLogFactory(file_proto(path, **fmt), "b", ctx)
    assert first.sink is second.sink
    first.log(info(201))
    second.log(info(202))
    first.close()
    assert path.read_text() == "201\n202\n"  # closing one flushes the shared buffer
    second.log(info(203))
    second.close()
    assert path.read_text() == "201\n202\n203\n"


def test_without_an_event_loop_each_line_is_written(tmp_path: Path) -> None:
    path = tmp_path / "sync.log"
    logger = FileAccessLogFactory(
        file_proto(path, log_format={"json_format": {"code": "%RESPONSE_CODE%"}}), "f", make_ctx()
    )
    logger.log(info(418))
    assert path.read_text() == '{"code":418}\n'
    logger.close()


def test_deprecated_format_fields(tmp_path: Path) -> None:
    text = FileAccessLogFactory(file_proto(tmp_path / "a.log", format="%RESPONSE_CODE%\n"), "f", make_ctx())
    text.log(info(200))
    untyped = FileAccessLogFactory(
        file_proto(tmp_path / "b.log", json_format={"c": "%RESPONSE_CODE%"}), "f", make_ctx()
    )
    untyped.log(info(200))
    text.close()
    untyped.close()
    assert (tmp_path / "a.log").read_text() == "200\n"
    assert (tmp_path / "b.log").read_text() == '{"c":"200"}\n'


def test_dev_stdout_path_and_stream_loggers(capfd: pytest.CaptureFixture[str]) -> None:
    ctx = make_ctx()
    fmt = {"log_format": {"text_format_source": {"inline_string": "code=%RESPONSE_CODE%\n"}}}
    by_path = FileAccessLogFactory(json_format.ParseDict({"path": "/dev/stdout", **fmt}, file_pb2.FileAccessLog()),
                                   "f", ctx)
    stdout = StdoutAccessLogFactory(json_format.ParseDict(fmt, stream_pb2.StdoutAccessLog()), "s", ctx)
    stderr = StderrAccessLogFactory(json_format.ParseDict(fmt, stream_pb2.StderrAccessLog()), "e", ctx)
    assert by_path.sink is stdout.sink  # one buffer for fd 1, whichever way it was named
    by_path.log(info(201))
    stdout.log(info(202))
    stderr.log(info(203))
    for logger in (by_path, stdout, stderr):
        logger.close()
    captured = capfd.readouterr()
    assert captured.out == "code=201\ncode=202\n"
    assert captured.err == "code=203\n"
    os.fstat(1)  # the inherited stdout fd is still open


def test_unopenable_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        FileAccessLogFactory(file_proto(tmp_path / "missing-dir" / "x.log"), "access_log[0].typed_config", make_ctx())
    assert error.value.field == "access_log[0].typed_config.path"


def test_empty_path_is_refused() -> None:
    with pytest.raises(ConfigError):
        FileAccessLogFactory(file_pb2.FileAccessLog(), "f", make_ctx())


def test_unsupported_format_extension_is_refused(tmp_path: Path) -> None:
    proto = file_proto(tmp_path / "x.log", log_format={"text_format": "x", "json_format_options": {"sort_properties": True}})
    with pytest.raises(ConfigError):
        FileAccessLogFactory(proto, "f", make_ctx())
    stream = json_format.ParseDict(
        {"log_format": {"text_format_source": {"watched_directory": {"path": "/tmp"}, "filename": "/tmp/x"}}},
        stream_pb2.StdoutAccessLog(),
    )
    with pytest.raises(UnsupportedFeature) as refused:
        StdoutAccessLogFactory(stream, "s", make_ctx())
    assert refused.value.field == "s.log_format.text_format_source.watched_directory"
