"""What every HTTP API request must pass before a handler sees it (docs/control-plane.md,
"Authentication and browser protections"), as one aiohttp middleware.

1. ``Host`` names this API: the address the connection arrived on with its port
   (``127.0.0.1:15014``, ``[::1]:15014``), ``localhost``/``127.0.0.1``/``[::1]`` with the port when
   that address is loopback, or a name given with ``--api-allowed-host``. DNS rebinding points a
   hostile name at 127.0.0.1 and the browser sends that name: 421 Misdirected Request (RFC 9110
   §15.5.20: this server does not serve that authority). Missing or repeated ``Host``: 400.
2. No cross-site browser request: an ``Origin`` other than this API's own ``http://<allowed host>``
   (``null`` included), or ``Sec-Fetch-Site: cross-site|same-site``: 403.
3. ``Authorization: Bearer <token>`` on everything but ``GET /healthz``: 401 with
   ``WWW-Authenticate: Bearer`` otherwise (RFC 6750 §3), compared in constant time.
4. A body is JSON or YAML by its ``Content-Type``: a form or ``text/plain`` is what a web page may
   send without a CORS preflight: 415.

The checks run in this order, so a caller without the token learns nothing about the routes.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

OPEN_PATHS = frozenset({"/healthz"})  # GET/HEAD without a token: liveness probes
BODY_TYPES = frozenset({"application/json", "application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
CROSS_SITE_FETCHES = frozenset({"cross-site", "same-site"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
REALM = 'Bearer realm="tulle"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_guard(token: str, allowed_hosts: Iterable[str] = ()) -> Callable[[web.Request, Handler],
                                                                               Awaitable[web.StreamResponse]]:
    """The middleware; ``allowed_hosts`` are ``--api-allowed-host`` values (``name`` or ``name:port``)."""
    expected = token.encode()
    names, authorities = _split_allowed(allowed_hosts)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = (_host_refusal(request, names, authorities) or _cross_site_refusal(request, names, authorities)
                   or _token_refusal(request, expected) or _body_type_refusal(request))
        return refusal if refusal is not None else await handler(request)

    return guard


def _refuse(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


# --- 1. Host ------------------------------------------------------------------------------


def _split_allowed(allowed: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    """Names valid on the API's port, and whole ``name:port`` authorities."""
    names: set[str] = set()
    authorities: set[str] = set()
    for entry in (entry.strip().lower() for entry in allowed):
        if not entry:
            continue
        host, colon, port = entry.rpartition(":")
        if colon and port.isdigit() and (host.endswith("]") or ":" not in host):
            authorities.add(entry)  # name:port or [v6]:port
        elif ":" in entry and not entry.startswith("["):
            names.add(f"[{entry}]")  # a bare IPv6 address
        else:
            names.add(entry)
    return frozenset(names), frozenset(authorities)


def allowed_authorities(request: web.Request, names: Iterable[str] = (), authorities: Iterable[str] = ()) -> set[str]:
    """The ``Host`` values that name this API on the connection ``request`` came in on."""
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if not sockname:
        return set(authorities)
    address, port = str(sockname[0]).split("%", 1)[0], int(sockname[1])
    hosts = set(names)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        hosts.add(address.lower())
    else:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        hosts.add(f"[{ip}]" if ip.version == 6 else str(ip))
        if ip.is_loopback:
            hosts.update(LOOPBACK_NAMES)
    allowed = {f"{host}:{port}" for host in hosts} | set(authorities)
    if port == 80:  # http's default port may be left out
        allowed |= hosts
    return allowed


def _host_refusal(request: web.Request, names: frozenset[str], authorities: frozenset[str]) -> web.Response | None:
    given = request.headers.getall("Host", [])
    if len(given) != 1:
        return _refuse(400, "a request needs exactly one Host header")
    host = given[0].strip().lower()
    allowed = allowed_authorities(request, names, authorities)
    if host in allowed:
        return None
    return _refuse(421, f"Host {given[0]!r} does not name this API (it answers to {', '.join(sorted(allowed))}); "
                        "to reach it by another name, start the control plane with --api-allowed-host NAME")


# --- 2. cross-site requests -----------------------------------------------------------------


def _cross_site_refusal(request: web.Request, names: frozenset[str], authorities: frozenset[str]
                        ) -> web.Response | None:
    origin = request.headers.get("Origin")
    if origin is not None:
        own = {f"http://{authority}" for authority in allowed_authorities(request, names, authorities)}
        if origin.strip().lower() not in own:
            return _refuse(403, f"cross-origin requests are refused: Origin {origin!r} is not this API's origin")
    fetch_site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    if fetch_site in CROSS_SITE_FETCHES:
        return _refuse(403, f"cross-site requests are refused (Sec-Fetch-Site: {fetch_site})")
    return None


# --- 3. the token ---------------------------------------------------------------------------


def _token_refusal(request: web.Request, expected: bytes) -> web.Response | None:
    if request.path in OPEN_PATHS and request.method in ("GET", "HEAD"):
        return None
    scheme, _, presented = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return _refuse(401, "this API needs 'Authorization: Bearer <token>'; the token is in the control "
                            "plane's state directory (api-token) or the file given to its --token-file",
                       **{"WWW-Authenticate": REALM})
    if not hmac.compare_digest(presented.strip().encode("utf-8", "surrogateescape"), expected):
        return _refuse(401, "the bearer token is not this control plane's",
                       **{"WWW-Authenticate": f'{REALM}, error="invalid_token"'})
    return None


# --- 4. the body's type ---------------------------------------------------------------------


def _body_type_refusal(request: web.Request) -> web.Response | None:
    if not request.body_exists or request.content_type in BODY_TYPES:
        return None
    given = request.headers.get("Content-Type")
    what = f"Content-Type {given!r}" if given else "no Content-Type"
    return _refuse(415, f"a request body must be JSON or YAML, with Content-Type application/json or "
                        f"application/yaml; this one has {what}")
