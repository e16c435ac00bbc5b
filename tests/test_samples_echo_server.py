"""The sample backend used by the demo and the integration tests."""

from __future__ import annotations

import http.client
import json

from tulle.samples.echo_server import start_in_thread


def test_echo_server_paths() -> None:
    server = start_in_thread("v9")
    port = server.server_address[1]
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("POST", "/anything?x=1", body=b"12345", headers={"X-Test": "yes"})
        response = connection.getresponse()
        echo = json.loads(response.read())
        assert response.getheader("x-served-by") == "v9"
        assert echo["path"] == "/anything?x=1" and echo["body_length"] == 5 and echo["headers"]["x-test"] == "yes"
        connection.request("GET", "/status/418")
        response = connection.getresponse()
        assert response.status == 418 and response.read() == b"status 418\n"
        connection.request("GET", "/bytes/3000")
        assert len(connection.getresponse().read()) == 3000
        connection.request("GET", "/chunked/2500")
        response = connection.getresponse()
        assert response.getheader("transfer-encoding") == "chunked" and len(response.read()) == 2500
    finally:
        server.shutdown()
