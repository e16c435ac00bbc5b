"""A real gRPC server (grpcio) for tests, without generated code: the messages are raw bytes.

Service ``test.Echo``:
- ``Unary``: answers the request bytes prefixed with the server's label (``b"<label>:"``); a request
  ``b"fail:<code>"`` fails with that status code and message ``"asked to fail"``; ``b"sleep:<s>"``
  sleeps first (deadlines); ``b"size:<n>"`` answers n bytes; the caller's metadata ``x-echo`` comes
  back as initial metadata and ``x-echo-trailer`` as trailing metadata;
- ``ServerStream``: the request ``b"<n>"`` yields n messages ``b"0"``, ``b"1"``, ...;
- ``ClientStream``: answers the messages joined with ``b","``;
- ``BidiStream``: echoes each message as it arrives, upper-cased.

``calls`` counts calls per method; ``cancelled`` counts calls whose client went away.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc

SERVICE = "test.Echo"


def _identity(data: bytes) -> bytes:
    return data


class GrpcBackend:
    def __init__(self, label: str = "grpc") -> None:
        self.label = label
        self.calls: Counter[str] = Counter()
        self.cancelled = 0
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary, _identity, _identity),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self._server_stream, _identity, _identity),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self._client_stream, _identity, _identity),
            "BidiStream": grpc.stream_stream_rpc_method_handler(self._bidi, _identity, _identity),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _unary(self, request: bytes, context: Any) -> bytes:
        with self.lock:
            self.calls["Unary"] += 1
        metadata = dict(context.invocation_metadata())
        if "x-echo" in metadata:
            context.send_initial_metadata((("x-echo", metadata["x-echo"]),))
        if "x-echo-trailer" in metadata:
            context.set_trailing_metadata((("x-echo-trailer", metadata["x-echo-trailer"]),))
        if request.startswith(b"fail:"):
            context.abort(grpc.StatusCode(_code(int(request[5:]))), "asked to fail")
        if request.startswith(b"sleep:"):
            deadline = time.monotonic() + float(request[6:])
            while time.monotonic() < deadline:
                if not context.is_active():
                    with self.lock:
                        self.cancelled += 1
                    return b""
                time.sleep(0.01)
        if request.startswith(b"size:"):
            return b"z" * int(request[5:])
        return self.label.encode() + b":" + request

    def _server_stream(self, request: bytes, context: Any) -> Iterator[bytes]:
        with self.lock:
            self.calls["ServerStream"] += 1
        for index in range(int(request)):
            yield str(index).encode()

    def _client_stream(self, requests: Iterator[bytes], context: Any) -> bytes:
        with self.lock:
            self.calls["ClientStream"] += 1
        return b",".join(requests)

    def _bidi(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        with self.lock:
            self.calls["BidiStream"] += 1
        for message in requests:
            yield message.upper()

    # the conformance harness closes backends like socketservers
    def shutdown(self) -> None:
        self.server.stop(grace=None)

    def server_close(self) -> None:
        pass


def _code(value: int) -> tuple[int, str]:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code.value
    raise ValueError(value)


def stub(channel: grpc.Channel, method: str, kind: str = "unary_unary") -> Any:
    """A callable for ``/test.Echo/<method>`` of the given cardinality, bytes in and out."""
    factory = getattr(channel, kind)
    return factory(f"/{SERVICE}/{method}", request_serializer=_identity, response_deserializer=_identity)


@contextmanager
def grpc_backend(label: str = "grpc") -> Iterator[GrpcBackend]:
    backend = GrpcBackend(label)
    try:
        yield backend
    finally:
        backend.shutdown()
