"""File, stdout and stderr access loggers (Envoy's ``envoy.access_loggers.{file,stdout,stderr}``).

Lines are buffered in memory and written with one ``write(2)`` per flush:
at most ~1 s after the first buffered line (Envoy's default file flush
interval), as soon as 64 KiB are pending (Envoy's minimum flush size), and
on ``close()``. Every logger writing the same path in a worker shares one
open file through ``FactoryContext.shared``; the file is opened with
O_APPEND so whole-line writes from several worker processes do not mix.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from typing import Any, Protocol

from google.protobuf import json_format

from tulle.access_log.formatter import (
    Formatter,
    compile_format,
    compile_json_format,
    default_formatter,
    formatter_from_proto,
)
from tulle.config.errors import ConfigError, join
from tulle.config.support import check_fields
from tulle.server.context import FactoryContext
from tulle.stream_info import StreamInfo

log = logging.getLogger("tulle.access_log")

FLUSH_INTERVAL_SECONDS = 1.0
FLUSH_SIZE_BYTES = 64 * 1024


class AccessLogger(Protocol):
    def log(self, info: StreamInfo) -> None: ...

    def close(self) -> None: ...


class LogSink:
    """A buffered, shared append-only output (a file path or an inherited fd)."""

    def __init__(self, name: str, fd: int, owns_fd: bool, loop: asyncio.AbstractEventLoop | None) -> None:
        self.name = name
        self.fd = fd
        self.owns_fd = owns_fd
        self.loop = loop
        self.users = 0
        self.pending: list[str] = []
        self.pending_bytes = 0
        self.flush_handle: asyncio.TimerHandle | None = None
        self.closed = False
        self.reported_error = False

    def write(self, line: str) -> None:
        if self.closed:
            return
        self.pending.append(line)
        self.pending_bytes += len(line)
        if self.pending_bytes >= FLUSH_SIZE_BYTES:
            self.flush()
        elif self.flush_handle is None:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()  # no event loop (tools, tests): nothing could flush later
                return
        self.flush_handle = loop.call_later(FLUSH_INTERVAL_SECONDS, self._timed_flush)

    def _timed_flush(self) -> None:
        self.flush_handle = None
        self.flush()

    def flush(self) -> None:
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        if not self.pending or self.closed:
            return
        data = "".join(self.pending).encode("utf-8", "surrogateescape")
        self.pending.clear()
        self.pending_bytes = 0
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except InterruptedError:
                continue
            except BlockingIOError:
                # A non-blocking pipe is full: keep the rest for the next flush.
                self.pending.append(bytes(view).decode("utf-8", "surrogateescape"))
                self.pending_bytes = len(view)
                self._schedule_flush()
                return
            except OSError as exc:
                if not self.reported_error:
                    log.error("access log %s: write failed: %s (dropping lines)", self.name, exc.strerror)
                    self.reported_error = True
                return
            view = view[written:]

    def release(self, shared: dict[str, Any], key: str) -> None:
        self.users -= 1
        self.flush()
        if self.users > 0:
            return
        self.closed = True
        if shared.get(key) is self:
            del shared[key]
        if self.owns_fd:
            try:
                os.close(self.fd)
            except OSError:
                pass


_STANDARD_STREAMS = {"/dev/stdout": 1, "/dev/stderr": 2}


def _acquire_path(ctx: FactoryContext, path: str, field: str) -> tuple[LogSink, str]:
    if path in _STANDARD_STREAMS:
        # Write through the inherited fd: a second open file description of the same file would
        # keep its own offset and overwrite what fd 1 writes when stdout is a plain file.
        return _acquire_fd(ctx, _STANDARD_STREAMS[path], path)
    key = f"access_log:path:{path}"
    sink = ctx.shared.get(key)
    if sink is None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "error")
            raise ConfigError(f"cannot open access log file {path!r}: {reason}", field=field) from None
        sink = ctx.shared[key] = LogSink(path, fd, True, ctx.loop)
    sink.users += 1
    return sink, key


def _acquire_fd(ctx: FactoryContext, fd: int, name: str) -> tuple[LogSink, str]:
    key = f"access_log:fd:{fd}"
    sink = ctx.shared.get(key)
    if sink is None:
        sink = ctx.shared[key] = LogSink(name, fd, False, ctx.loop)
    sink.users += 1
    return sink, key


class _BufferedLogger:
    def __init__(self, formatter: Formatter, sink: LogSink, key: str, ctx: FactoryContext) -> None:
        self.formatter = formatter
        self.sink = sink
        self._key = key
        self._shared = ctx.shared
        self._closed = False

    def log(self, info: StreamInfo) -> None:
        self.sink.write(self.formatter.format(info))

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.sink.release(self._shared, self._key)


class FileAccessLogFactory(_BufferedLogger):
    """``envoy.extensions.access_loggers.file.v3.FileAccessLog``."""

    def __init__(self, proto: Any, field: str, ctx: FactoryContext) -> None:
        check_fields(proto, ("path", "log_format", "format", "json_format", "typed_json_format"), field)
        if not proto.path:
            raise ConfigError("path must be set", field=join(field, "path"))
        formatter = _file_formatter(proto, field)
        sink, key = _acquire_path(ctx, proto.path, join(field, "path"))
        super().__init__(formatter, sink, key, ctx)


def _file_formatter(proto: Any, field: str) -> Formatter:
    kind = proto.WhichOneof("access_log_format")
    if kind == "log_format":
        return formatter_from_proto(proto.log_format, join(field, "log_format"))
    if kind == "format":  # deprecated plain format string
        return compile_format(proto.format, join(field, "format"))
    if kind in ("json_format", "typed_json_format"):  # deprecated: json_format is all-strings
        return compile_json_format(
            json_format.MessageToDict(getattr(proto, kind)), join(field, kind), typed=kind == "typed_json_format"
        )
    return default_formatter()


class _StreamAccessLog(_BufferedLogger):
    fd = 1
    stream_name = "/dev/stdout"

    def __init__(self, proto: Any, field: str, ctx: FactoryContext) -> None:
        check_fields(proto, ("log_format",), field)
        if proto.HasField("log_format"):
            formatter = formatter_from_proto(proto.log_format, join(field, "log_format"))
        else:
            formatter = default_formatter()
        sink, key = _acquire_fd(ctx, self.fd, self.stream_name)
        super().__init__(formatter, sink, key, ctx)


class StdoutAccessLogFactory(_StreamAccessLog):
    """``envoy.extensions.access_loggers.stream.v3.StdoutAccessLog``."""


class StderrAccessLogFactory(_StreamAccessLog):
    """``envoy.extensions.access_loggers.stream.v3.StderrAccessLog``."""

    fd = 2
    stream_name = "/dev/stderr"
