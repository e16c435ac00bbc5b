"""A bookinfo-like sample application (Istio's demo app), every service in Python's stdlib.

``python -m tulle.samples.bookinfo.app SERVICE --version vN --port APPPORT`` runs one of:

* ``productpage`` (v1): ``/productpage`` (HTML; JSON with ``?format=json``), ``/api/v1/products...``;
  calls details and reviews;
* ``details`` (v1): ``/details/<id>``;
* ``reviews``: v1 without ratings, v2 black stars, v3 red stars (v2 and v3 call ratings);
* ``ratings`` (v1): ``/ratings/<id>``.

The services imitate their polyglot originals (Python, Ruby, Java, Node.js) in response style
only: different ``server``/``x-powered-by`` headers, content types and JSON layout. They call
each other as ``http://<service>:9080/...`` through ``HTTP_PROXY`` (the sidecar's forward
proxy), or at an explicit ``--upstream SERVICE=HOST:PORT``; they propagate x-request-id and
the b3 / x-b3 tracing headers as Istio's bookinfo does, and every answer carries
``x-served-by: <service>-<version>`` and a JSON ``chain`` naming every service version that
served the request, so a demo can count which reviews version answered.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SERVICE_PORT = 9080
SERVICES = ("productpage", "details", "reviews", "ratings")
REVIEWS_STAR_COLORS = {"v1": "", "v2": "black", "v3": "red"}
# What Istio's bookinfo forwards: Envoy's request id, B3 (multi and single header), W3C/OT
# trace context, and end-user (the header Istio's request-routing task matches on).
PROPAGATED_HEADERS = (
    "x-request-id",
    "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3",
    "x-ot-span-context", "traceparent", "tracestate",
    "end-user",
)
# Each service answers in the style of its original implementation.
RESPONSE_STYLE: dict[str, dict[str, str]] = {
    "productpage": {"server": "bookinfo-productpage (python, flask-style)"},
    "details": {"server": "bookinfo-details (ruby, webrick-style)"},
    "reviews": {"server": "bookinfo-reviews (java, liberty-style)", "x-powered-by": "Servlet/4.0",
                "content-language": "en-US"},
    "ratings": {"x-powered-by": "bookinfo-ratings (node.js, express-style)"},
}
JSON_CONTENT_TYPE = {"ratings": "application/json; charset=utf-8"}
PRODUCT = {
    "id": 0,
    "title": "The Comedy of Errors",
    "descriptionHtml": "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: "
                       "The Comedy of Errors is one of <b>William Shakespeare's</b> early plays.",
}
REVIEWS = (
    ("Reviewer1", "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"),
    ("Reviewer2", "Absolutely fun and entertaining. The play lacks thematic depth when compared to "
                  "other plays by Shakespeare."),
)
RATINGS = {"Reviewer1": 5, "Reviewer2": 4}


def served_label(service: str, version: str) -> str:
    return f"{service}-{version}"


def versions_of(chain: list[str]) -> dict[str, str]:
    """``["productpage-v1", "reviews-v2"]`` -> ``{"productpage": "v1", "reviews": "v2"}``."""
    return dict(label.rsplit("-", 1) for label in chain if "-" in label)


@dataclass
class UpstreamAnswer:
    status: int  # 0 when the call did not get an HTTP answer
    body: dict[str, Any] | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.body is not None

    @property
    def chain(self) -> list[str]:
        chain = (self.body or {}).get("chain", [])
        return [str(label) for label in chain] if isinstance(chain, list) else []


@dataclass
class Upstreams:
    """How this service reaches the others: explicit addresses first, else HTTP_PROXY, else DNS."""

    addresses: dict[str, str] = field(default_factory=dict)  # service -> host:port
    proxy: str = ""  # the forward proxy's URL; "" reads HTTP_PROXY / http_proxy
    timeout: float = 3.0

    def __post_init__(self) -> None:
        if not self.proxy:
            self.proxy = urllib.request.getproxies().get("http", "")
        # No environment proxies and no no_proxy bypass: the mesh must see every call.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, service: str, path: str, headers: Mapping[str, str]) -> UpstreamAnswer:
        authority = f"{service}:{SERVICE_PORT}"
        target = self.addresses.get(service, authority)
        request = urllib.request.Request(f"http://{target}{path}", headers=dict(headers))
        request.add_header("Host", authority)  # routes match on the service, not the local port
        if service not in self.addresses and self.proxy:
            proxy = urllib.parse.urlsplit(self.proxy if "//" in self.proxy else f"http://{self.proxy}")
            request.set_proxy(proxy.netloc, "http")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return UpstreamAnswer(response.status, _json_or_none(response.read()))
        except urllib.error.HTTPError as error:
            return UpstreamAnswer(error.code, _json_or_none(error.read()), f"{service} answered {error.code}")
        except OSError as error:
            reason = getattr(error, "reason", error)
            return UpstreamAnswer(0, None, f"{service} unreachable: {reason}")


def _json_or_none(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"


Route = Callable[["BookinfoHandler", re.Match[str]], Reply]


class BookinfoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: BookinfoServer
    # One write per response, sent at once (see tulle.samples.echo_server.EchoHandler).
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet by default
        pass

    # --- plumbing -------------------------------------------------------------
    @property
    def label(self) -> str:
        return served_label(self.server.service, self.server.version)

    def forward_headers(self) -> dict[str, str]:
        return {name: self.headers[name] for name in PROPAGATED_HEADERS if self.headers.get(name)}

    def json_reply(self, status: int, body: dict[str, Any], chain: list[str] | None = None) -> Reply:
        """Every JSON answer names the chain of service versions that produced it."""
        chain = [self.label, *(chain or [])]
        document = {**body, "served_by": self.label, "chain": chain, "versions": versions_of(chain)}
        # Ruby's and Node's JSON are compact, Python's and Java's spaced: the style, not the data.
        compact = self.server.service in ("details", "ratings")
        text = json.dumps(document, separators=(",", ":")) if compact else json.dumps(document, indent=2)
        return Reply(status, text.encode(), JSON_CONTENT_TYPE.get(self.server.service, "application/json"))

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._drain_request_body()
        path = urllib.parse.urlsplit(self.path).path
        reply = self.json_reply(404, {"error": f"no route for {path}"})
        for pattern, route in ROUTES[self.server.service]:
            match = pattern.fullmatch(path)
            if match:
                reply = route(self, match)
                break
        self.send_response(reply.status)
        for name, value in RESPONSE_STYLE[self.server.service].items():
            self.send_header(name, value)
        self.send_header("content-type", reply.content_type)
        self.send_header("content-length", str(len(reply.body)))
        self.send_header("x-served-by", self.label)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    do_HEAD = do_GET

    def _drain_request_body(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)

    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))

    # --- productpage (Python) -------------------------------------------------------
    def product_page(self, match: re.Match[str]) -> Reply:
        details, reviews = self._details_and_reviews(PRODUCT["id"])
        chain = details.chain + reviews.chain
        errors = {name: answer.error or f"status {answer.status}"
                  for name, answer in (("details", details), ("reviews", reviews)) if not answer.ok}
        page = {"product": PRODUCT, "details": details.body if details.ok else None,
                "reviews": (reviews.body or {}).get("reviews") if reviews.ok else None, "errors": errors}
        wants_json = self.query().get("format") == "json" or "application/json" in self.headers.get("accept", "")
        if wants_json:
            return self.json_reply(200, page, chain)
        return Reply(200, render_product_page(page, [self.label, *chain]).encode(), "text/html; charset=utf-8")

    def _details_and_reviews(self, product_id: int) -> tuple[UpstreamAnswer, UpstreamAnswer]:
        headers = self.forward_headers()
        upstreams = self.server.upstreams
        return (upstreams.get("details", f"/details/{product_id}", headers),
                upstreams.get("reviews", f"/reviews/{product_id}", headers))

    def products(self, match: re.Match[str]) -> Reply:
        return self.json_reply(200, {"products": [PRODUCT]})

    def product_api(self, match: re.Match[str]) -> Reply:
        """``/api/v1/products/<id>[/reviews|/ratings]``: the upstream's answer, passed through."""
        product_id, what = int(match.group(1)), match.group(2) or "details"
        answer = self.server.upstreams.get(what, f"/{what}/{product_id}", self.forward_headers())
        if not answer.ok:
            status = answer.status if answer.status >= 400 else 503
            return self.json_reply(status, {"error": answer.error or f"{what} unavailable"}, answer.chain)
        body = {key: value for key, value in (answer.body or {}).items()
                if key not in ("served_by", "chain", "versions")}
        return self.json_reply(200, body, answer.chain)

    # --- details (Ruby) -----------------------------------------------------
    def details(self, match: re.Match[str]) -> Reply:
        product_id = int(match.group(1))
        return self.json_reply(200, {
            "id": product_id, "author": "William Shakespeare", "year": 1595, "type": "paperback",
            "pages": 200, "publisher": "PublisherA", "language": "English",
            "ISBN-10": "1234567890", "ISBN-13": "123-1234567890",
        })

    # --- reviews (Java) -----------------------------------------------------
    def reviews(self, match: re.Match[str]) -> Reply:
        product_id = match.group(1)
        color = REVIEWS_STAR_COLORS[self.server.version]
        chain: list[str] = []
        ratings: dict[str, Any] | None = None
        if color:  # v2 and v3 show stars, so they ask ratings
            answer = self.server.upstreams.get("ratings", f"/ratings/{product_id}", self.forward_headers())
            chain = answer.chain
            if answer.ok:
                ratings = (answer.body or {}).get("ratings", {})
        entries = []
        for reviewer, text in REVIEWS:
            entry: dict[str, Any] = {"reviewer": reviewer, "text": text}
            if color:
                entry["rating"] = ({"stars": ratings.get(reviewer, 0), "color": color} if ratings is not None
                                   else {"error": "Ratings service is currently unavailable"})
            entries.append(entry)
        return self.json_reply(200, {"id": product_id, "podname": self.label, "clustername": "null",
                                     "reviews": entries}, chain)

    # --- ratings (Node.js) ----------------------------------------------------
    def ratings(self, match: re.Match[str]) -> Reply:
        return self.json_reply(200, {"id": int(match.group(1)), "ratings": dict(RATINGS)})

    # --- every service ------------------------------------------------------
    def health(self, match: re.Match[str]) -> Reply:
        return self.json_reply(200, {"status": f"{self.server.service.capitalize()} is healthy"})

    def bad_product_id(self, match: re.Match[str]) -> Reply:
        return self.json_reply(400, {"error": "please provide numeric product ID"})


_NOT_A_NUMBER = re.compile(r"/(?:details|reviews|ratings)/[^/]*")
_HEALTH = (re.compile(r"/health"), BookinfoHandler.health)
ROUTES: dict[str, list[tuple[re.Pattern[str], Route]]] = {
    "productpage": [
        (re.compile(r"/(?:productpage)?"), BookinfoHandler.product_page),
        (re.compile(r"/api/v1/products"), BookinfoHandler.products),
        (re.compile(r"/api/v1/products/(\d+)(?:/(reviews|ratings))?"), BookinfoHandler.product_api),
        _HEALTH,
    ],
    "details": [(re.compile(r"/details/(\d+)"), BookinfoHandler.details), _HEALTH,
                (_NOT_A_NUMBER, BookinfoHandler.bad_product_id)],
    "reviews": [(re.compile(r"/reviews/(\d+)"), BookinfoHandler.reviews), _HEALTH,
                (_NOT_A_NUMBER, BookinfoHandler.bad_product_id)],
    "ratings": [(re.compile(r"/ratings/(\d+)"), BookinfoHandler.ratings), _HEALTH,
                (_NOT_A_NUMBER, BookinfoHandler.bad_product_id)],
}


def render_product_page(page: dict[str, Any], chain: list[str]) -> str:
    product = page["product"]
    parts = ["<!DOCTYPE html>\n<html><head><title>Simple Bookstore App</title></head><body>",
             f"<h1>{html.escape(product['title'])}</h1>", f"<p>{product['descriptionHtml']}</p>"]
    details = page["details"]
    if details:
        rows = "".join(f"<dt>{html.escape(str(key))}</dt><dd>{html.escape(str(details[key]))}</dd>"
                       for key in ("type", "pages", "publisher", "language", "ISBN-10", "ISBN-13"))
        parts.append(f"<h2>Book Details</h2><dl>{rows}</dl>")
    else:
        parts.append("<h2>Error fetching product details!</h2>"
                     "<p>Sorry, product details are currently unavailable for this book.</p>")
    reviews = page["reviews"]
    if reviews is None:
        parts.append("<h2>Error fetching product reviews!</h2>"
                     "<p>Sorry, product reviews are currently unavailable for this book.</p>")
    else:
        parts.append("<h2>Book Reviews</h2>")
        for review in reviews:
            rating = review.get("rating") or {}
            stars = ""
            if "stars" in rating:
                stars = f"<span style=\"color:{rating['color']}\">{'★' * rating['stars']}{'☆' * (5 - rating['stars'])}</span>"
            elif "error" in rating:
                stars = f"<em>{html.escape(rating['error'])}</em>"
            parts.append(f"<blockquote><p>{html.escape(review['text'])}</p>"
                         f"<small>{html.escape(review['reviewer'])}</small> {stars}</blockquote>")
    document = json.dumps({"chain": chain, "versions": versions_of(chain)}).replace("</", "<\\/")
    parts.append(f"<script type=\"application/json\" id=\"bookinfo-chain\">{document}</script></body></html>\n")
    return "\n".join(parts)


class BookinfoServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, service: str, version: str, address: tuple[str, int], upstreams: Upstreams) -> None:
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
        if service == "reviews" and version not in REVIEWS_STAR_COLORS:
            raise ValueError(f"reviews comes as {', '.join(REVIEWS_STAR_COLORS)}, not {version!r}")
        self.service = service
        self.version = version
        self.upstreams = upstreams
        super().__init__(address, BookinfoHandler)


def start_in_thread(service: str, version: str = "v1", port: int = 0, host: str = "127.0.0.1",
                    upstreams: Upstreams | None = None) -> BookinfoServer:
    """For tests and demos: serve in a daemon thread; ``server.shutdown()`` stops it."""
    server = BookinfoServer(service, version, (host, port), upstreams or Upstreams())
    # a short poll interval makes shutdown() prompt (it waits for the serve loop to notice)
    threading.Thread(target=server.serve_forever, args=(0.05,), name=f"bookinfo-{service}", daemon=True).start()
    return server


def _service_address(text: str) -> tuple[str, str]:
    service, sep, address = text.partition("=")
    if not sep or service not in SERVICES or ":" not in address:
        raise argparse.ArgumentTypeError(f"expected SERVICE=HOST:PORT with SERVICE one of {SERVICES}, got {text!r}")
    return service, address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tulle.samples.bookinfo.app", description=__doc__.split("\n")[0])
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--version", default="v1", help="v1 (default); reviews: v1, v2 or v3")
    parser.add_argument("--port", type=int, default=SERVICE_PORT, help="the app port (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="only its sidecar talks to the app")
    parser.add_argument("--upstream", type=_service_address, action="append", default=[], metavar="SERVICE=HOST:PORT",
                        help="call SERVICE at HOST:PORT instead of through HTTP_PROXY (e.g. a sidecar upstream port)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per upstream call (default 3)")
    args = parser.parse_args(argv)
    try:
        server = BookinfoServer(args.service, args.version, (args.host, args.port),
                                Upstreams(dict(args.upstream), timeout=args.timeout))
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:  # the port is taken (or the address is not local): say which, no traceback
        print(f"{parser.prog}: error: {served_label(args.service, args.version)} cannot listen on "
              f"{args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    proxy = server.upstreams.proxy or "none (direct)"
    print(f"{served_label(args.service, args.version)} on {args.host}:{server.server_address[1]}; "
          f"upstream proxy {proxy}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
