"""Claiming a listening address for this process before binding it with SO_REUSEPORT.

Each worker has its own listening socket on a listener's port (SO_REUSEPORT), but Linux lets any
process of the same user join such a group: a second proxy, sidecar or control plane started on
the same address would bind it too and silently take a share of the connections (Envoy has the
same trap: envoyproxy/envoy#19099, #26042). A claim is a socket bound with SO_REUSEADDR and
without SO_REUSEPORT: its bind fails with EADDRINUSE while any socket listens on the address.
Held (bound, not listening) while this process binds its own SO_REUSEPORT sockets there, it does
not stop them; once they listen, every later claim fails. Two processes claiming the same free
address within the same few microseconds could still both pass: the check is for the case that
matters, one started while the other runs.
"""

from __future__ import annotations

import os
import socket


def address_text(ip: str, port: int) -> str:
    """``127.0.0.1:15010``, ``[::1]:15010``."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def claim(ip: str, port: int) -> socket.socket:
    """A socket bound to ``ip:port`` (port 0: a port nobody listens on); OSError if it is taken.
    Close it once this process's own sockets listen on the address."""
    sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT connections are no owner
        sock.bind((ip, port))
    except OSError:
        sock.close()
        raise
    return sock


def os_reason(error: OSError) -> str:
    """``Address already in use``: the OS's words (asyncio wraps them in a sentence of its own)."""
    return os.strerror(error.errno) if error.errno else str(error)


def unavailable(ip: str, port: int) -> str | None:
    """Why ``ip:port`` cannot be listened on now (``Address already in use``), or None if it can."""
    try:
        claim(ip, port).close()
    except OSError as exc:
        return os_reason(exc)
    return None
