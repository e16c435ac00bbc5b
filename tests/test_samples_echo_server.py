"""The sample backend used by the demo and the integration tests."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys

from backends import handle_one_connection
from tulle.samples.echo_server import serve, start_in_thread


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



def test_each_keep_alive_response_is_one_write_sent_without_delay() -> None:
    """Head and body written separately made every keep-alive request wait for the client's
    delayed ACK (Nagle, ~40 ms each): one write per response, and TCP_NODELAY."""
    server = serve(0, "v1")
    try:
        accepted, thread = handle_one_connection(server)
        connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
        for path in ["/anything", "/status/503", "/bytes/100"] * 10:
            connection.request("GET", path)
            response = connection.getresponse()
            assert response.status in (200, 503) and response.read()
        connection.close()
        thread.join(5)
        assert not thread.is_alive()
        assert accepted[0].writes == 30
        assert (socket.IPPROTO_TCP, socket.TCP_NODELAY, True) in accepted[0].options
    finally:
        server.server_close()


def test_a_taken_port_is_a_clear_error_not_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "tulle.samples.echo_server", "--port", str(port),
                                 "--name", "v1"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"v1 cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
