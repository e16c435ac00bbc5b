"""The control plane's HTTP API (docs/control-plane.md, "HTTP API"): resources, registry, debug views.

What it does not know is injected: ``validator(resources) -> [Diagnostic]`` (Istio validation),
``xds_status() -> [proxy status]`` and ``config_view(proxy_id, type) -> [xDS JSON] | None``. Each
may be a plain function or a coroutine function.

Applying resources is all or nothing: the body is parsed (YAML documents or a JSON list), every
resource's kind is checked, the validator sees the batch together with what is already stored
(so cross-resource checks such as missing subsets work), and only when no error is found does
the store take the batch in one transaction. Deleting a batch is one transaction too.

Parsing, validation and commits run in worker threads, one write at a time in arrival order: a
10,000-resource apply takes seconds of CPU, and the event loop must keep answering heartbeats
meanwhile (the store and the registry are thread-safe; their subscribers are told from the
thread that committed).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from tulle.controlplane.api.guard import request_guard
from tulle.controlplane.istio.documents import load_documents
from tulle.controlplane.istio.kinds import NETWORKING_KINDS, check_kind
from tulle.controlplane.model import Diagnostic, Resource, Service
from tulle.controlplane.registry.registry import (
    SERVICE_KIND,
    Lease,
    Registry,
    RegistryError,
    validate_service,
)
from tulle.controlplane.registry.validation import MAX_LABEL_LENGTH
from tulle.controlplane.store.base import ConfigStore, StoreError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 15014
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_REGISTRY_BODY_BYTES = 64 * 1024  # a registration is a few hundred bytes; the counts are bounded too
CONFIG_TYPES = ("listeners", "routes", "clusters", "endpoints")
KNOWN_KINDS = (*NETWORKING_KINDS, SERVICE_KIND)
SERVICE_BODY_FIELDS = ("name", "namespace", "ports", "labels", "selector", "addresses", "exportTo", "resolution")
INSTANCE_BODY_FIELDS = ("name", "namespace", "address", "ports", "labels", "serviceAccount", "locality", "services",
                        "ttlSeconds", "weight")
DELETE_BODY_FIELDS = ("items", "ignoreNotFound")

Validator = Callable[[list[Resource]], "list[Diagnostic] | Awaitable[list[Diagnostic]]"]
XdsStatus = Callable[[], Any]
ConfigView = Callable[[str, str], Any]


# --- JSON forms -------------------------------------------------------------------------


def resource_to_json(resource: Resource, generation: int = 0) -> dict[str, Any]:
    """A resource as Kubernetes writes one (and as POST /apis/v1/resources reads it back)."""
    metadata: dict[str, Any] = {"name": resource.name, "namespace": resource.namespace}
    if resource.labels:
        metadata["labels"] = dict(resource.labels)
    if resource.annotations:
        metadata["annotations"] = dict(resource.annotations)
    if generation:
        metadata["generation"] = generation
    return {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": metadata, "spec": resource.spec}


def diagnostic_to_json(diagnostic: Diagnostic) -> dict[str, str]:
    return {"level": diagnostic.level, "resource": diagnostic.resource, "field": diagnostic.field,
            "message": diagnostic.message, "source": diagnostic.source, "code": diagnostic.code}


def service_to_json(service: Service) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "hostname": service.hostname,
        "namespace": service.namespace,
        "ports": [{"name": port.name, "port": port.port, "protocol": port.protocol, "targetPort": port.target_port}
                  for port in service.ports],
        "labels": dict(service.labels),
        "resolution": service.resolution,
        "exportTo": list(service.export_to),
        "addresses": list(service.addresses),
        "origin": service.origin,
    }
    if service.origin == "registry":
        answer["name"] = service.hostname.split(".", 1)[0]
    return answer


def lease_to_json(lease: Lease, now: float, hostnames: Iterable[str] = ()) -> dict[str, Any]:
    instance = lease.instance
    return {
        "id": lease.id, "name": instance.name, "namespace": instance.namespace, "address": instance.address,
        "ports": dict(instance.ports), "labels": dict(instance.labels), "serviceAccount": instance.service_account,
        "locality": instance.locality, "weight": instance.weight, "services": list(lease.services),
        "hostnames": list(hostnames), "ttlSeconds": lease.ttl, "expiresInSeconds": round(lease.expires_at - now, 3),
    }


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _diagnostics_answer(status: int, errors: list[Diagnostic], warnings: list[Diagnostic]) -> web.Response:
    return web.json_response({"errors": [diagnostic_to_json(d) for d in errors],
                              "warnings": [diagnostic_to_json(d) for d in warnings]}, status=status)


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _plain_json(item: Any) -> Any:
    if isinstance(item, Message):
        return json_format.MessageToDict(item, preserving_proto_field_name=True)
    return item


# --- the server -------------------------------------------------------------------------


class ApiServer:
    """The aiohttp application and its lifecycle; ``app`` serves one ``start``/``stop`` cycle.

    Every request passes ``api.guard`` first: ``Host``, ``Origin``, the bearer ``token`` (a random
    one when none is given: the API is never open) and the body's type. ``allowed_hosts`` are the
    names it answers to besides the address it is reached on (``--api-allowed-host``).
    """

    def __init__(
        self,
        store: ConfigStore,
        registry: Registry,
        validator: Validator | None = None,
        xds_status: XdsStatus | None = None,
        config_view: ConfigView | None = None,
        *,
        token: str | None = None,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        self.store = store
        self.registry = registry
        self.validator = validator
        self.xds_status = xds_status
        self.config_view = config_view
        self.token = token or secrets.token_urlsafe(32)
        self.allowed_hosts = tuple(allowed_hosts)
        self.app = self._make_app()
        self._runner: web.AppRunner | None = None
        # Writes validate against what is stored, then commit: one at a time, in arrival order.
        self._writes = asyncio.Lock()

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES,
                              middlewares=[request_guard(self.token, self.allowed_hosts), _json_errors])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post("/apis/v1/resources", self.apply_resources)
        app.router.add_post("/apis/v1/resources:delete", self.delete_resources)
        app.router.add_get("/apis/v1/resources", self.list_resources)
        app.router.add_get("/apis/v1/resources/{kind}/{namespace}/{name}", self.get_resource)
        app.router.add_delete("/apis/v1/resources/{kind}/{namespace}/{name}", self.delete_resource)
        app.router.add_post("/apis/v1/services", self.put_service)
        app.router.add_get("/apis/v1/services", self.list_services)
        app.router.add_delete("/apis/v1/services/{namespace}/{name}", self.delete_service)
        app.router.add_post("/apis/v1/instances", self.register_instance)
        app.router.add_get("/apis/v1/instances", self.list_instances)
        app.router.add_put("/apis/v1/instances/{id}/heartbeat", self.heartbeat)
        app.router.add_delete("/apis/v1/instances/{id}", self.deregister_instance)
        app.router.add_get("/debug/proxies", self.debug_proxies)
        app.router.add_get("/debug/config/{proxy_id}", self.debug_config)
        return app

    async def start(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
        """Listen on ``host:port`` (0: any free port); the port actually bound."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- resources -----------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def apply_resources(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return _error(400, "the body is not UTF-8 text: send YAML documents or a JSON list of resources")
        if not text.strip():
            return _error(400, "empty body: send YAML documents or a JSON list of resources")
        source = request.query.get("source") or "request"
        namespace = request.query.get("namespace") or "default"
        async with self._writes:
            resources, errors, warnings = await asyncio.to_thread(_parse_batch, text, source, namespace)
            if errors:
                return _diagnostics_answer(400, errors, warnings)
            if not resources:
                return _error(400, "the body holds no resources")
            found = await self._validate(resources)
            errors.extend(d for d in found if d.level == "error")
            warnings.extend(d for d in found if d.level != "error")
            if errors:
                return _diagnostics_answer(400, errors, warnings)

            if _flag(request, "dry_run"):
                created, updated = await asyncio.to_thread(self._classify, resources)
                return web.json_response({"created": created, "updated": updated, "dryRun": True,
                                          "warnings": [diagnostic_to_json(d) for d in warnings]})
            try:
                created, updated = await asyncio.to_thread(self.store.apply, resources)
            except StoreError as error:
                return _diagnostics_answer(400, [Diagnostic("error", "", "", str(error))], warnings)
        return web.json_response({"created": created, "updated": updated,
                                  "warnings": [diagnostic_to_json(d) for d in warnings]})

    async def _validate(self, batch: list[Resource]) -> list[Diagnostic]:
        """The validator's findings about the batch, judged together with what is stored."""
        if self.validator is None:
            return []
        istio_batch = [resource for resource in batch if resource.kind != SERVICE_KIND]
        if not istio_batch:
            return []
        keys = {(r.kind, r.namespace, r.name) for r in istio_batch}
        stored = await asyncio.to_thread(
            lambda: [r for r in self.store.list() if r.kind != SERVICE_KIND and (r.kind, r.namespace, r.name) not in keys])
        diagnostics = await _off_loop(self.validator, istio_batch + stored)
        # Findings about resources already accepted are not this request's business.
        batch_refs = {resource.ref for resource in istio_batch}
        return [d for d in diagnostics if not d.resource or d.resource in batch_refs]

    def _classify(self, resources: list[Resource]) -> tuple[list[str], list[str]]:
        """What ``apply`` would answer, without applying (for dry runs)."""
        created: list[str] = []
        updated: list[str] = []
        final: dict[str, Resource] = {resource.ref: resource for resource in resources}
        for ref, resource in final.items():
            current = self.store.get(resource.kind, resource.namespace, resource.name)
            if current is None:
                created.append(ref)
            elif (current.api_version, current.spec, current.labels, current.annotations) != (
                    resource.api_version, resource.spec, resource.labels, resource.annotations):
                updated.append(ref)
        return created, updated

    async def list_resources(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind") or None
        namespace = request.query.get("namespace") or None
        if kind is not None:
            kind = _canonical_kind(kind)
        items = await asyncio.to_thread(self._list_json, kind, namespace)
        return web.json_response({"items": items})

    def _list_json(self, kind: str | None, namespace: str | None) -> list[dict[str, Any]]:
        return [resource_to_json(r, self.store.generation(r.kind, r.namespace, r.name))
                for r in self.store.list(kind, namespace)]

    async def get_resource(self, request: web.Request) -> web.Response:
        kind, namespace, name = self._path_key(request)
        resource = self.store.get(kind, namespace, name)
        if resource is None:
            return _error(404, f"{kind} {namespace}/{name} not found")
        return web.json_response(resource_to_json(resource, self.store.generation(kind, namespace, name)))

    async def delete_resource(self, request: web.Request) -> web.Response:
        kind, namespace, name = self._path_key(request)
        async with self._writes:
            deleted = await asyncio.to_thread(self.store.delete, kind, namespace, name)
        if not deleted:
            return _error(404, f"{kind} {namespace}/{name} not found")
        return web.json_response({"deleted": f"{kind} {namespace}/{name}"})

    async def delete_resources(self, request: web.Request) -> web.Response:
        """``{"items": [{"kind", "namespace"?, "name"}...], "ignoreNotFound"?}``: one transaction. A
        missing resource deletes nothing (404 naming the missing ones) unless ``ignoreNotFound``."""
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        problems = [Diagnostic("error", "", key, f"unknown field; known: {', '.join(DELETE_BODY_FIELDS)}")
                    for key in body if key not in DELETE_BODY_FIELDS]
        ignore_missing = body.get("ignoreNotFound", False)
        if not isinstance(ignore_missing, bool):
            problems.append(Diagnostic("error", "", "ignoreNotFound", "must be true or false"))
        items = body.get("items")
        keys: list[tuple[str, str, str]] = []
        if not isinstance(items, list) or not items:
            problems.append(Diagnostic("error", "", "items", "required: a non-empty list of {kind, namespace, name}"))
        else:
            for index, item in enumerate(items):
                key = _delete_key(item)
                if isinstance(key, str):
                    problems.append(Diagnostic("error", "", f"items[{index}]", key))
                else:
                    keys.append(key)
        if problems:
            return _diagnostics_answer(400, problems, [])
        async with self._writes:
            deleted, missing = await asyncio.to_thread(self.store.delete_many, keys, ignore_missing=ignore_missing)
        if missing and not ignore_missing:
            return _error(404, f"{len(missing)} of {len(set(keys))} resources not found; nothing was deleted",
                          notFound=missing, deleted=[])
        return web.json_response({"deleted": deleted, "notFound": missing})

    @staticmethod
    def _path_key(request: web.Request) -> tuple[str, str, str]:
        info = request.match_info
        return _canonical_kind(info["kind"]), info["namespace"], info["name"]

    # --- registry ------------------------------------------------------------------------

    async def put_service(self, request: web.Request) -> web.Response:
        body = await _registry_body(request)
        if isinstance(body, web.Response):
            return body
        name, namespace = body.get("name"), body.get("namespace") or "default"
        ref = f"{SERVICE_KIND} {namespace}/{name}"
        problems = _unknown_fields(body, SERVICE_BODY_FIELDS, ref)
        ports = body.get("ports")
        if not isinstance(ports, list) or not all(isinstance(port, dict) for port in ports):
            problems.append(Diagnostic("error", ref, "ports",
                                       "required: a list of {name, port, protocol?, targetPort?}"))
        if problems:
            return _registry_error(problems)
        extra = {key: body[key] for key in ("addresses", "exportTo", "resolution") if key in body}
        try:
            async with self._writes:
                service = await asyncio.to_thread(self.registry.put_service, name, namespace, ports,
                                                  body.get("labels"), body.get("selector"), **extra)
        except RegistryError as error:
            return _registry_error(error.diagnostics)
        except StoreError as error:
            return _registry_error([Diagnostic("error", ref, "", str(error))])
        return web.json_response(service_to_json(service))

    async def list_services(self, request: web.Request) -> web.Response:
        namespace = request.query.get("namespace") or None
        services = [s for s in self.registry.services() if namespace is None or s.namespace == namespace]
        return web.json_response({"items": [service_to_json(service) for service in services]})

    async def delete_service(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        async with self._writes:
            removed = await asyncio.to_thread(self.registry.remove_service, namespace, name)
        if not removed:
            return _error(404, f"service {namespace}/{name} not found in the registry")
        return web.json_response({"deleted": f"{SERVICE_KIND} {namespace}/{name}"})

    async def register_instance(self, request: web.Request) -> web.Response:
        body = await _registry_body(request)
        if isinstance(body, web.Response):
            return body
        namespace = body.get("namespace") or "default"
        problems = _unknown_fields(body, INSTANCE_BODY_FIELDS, f"instance {namespace}/{body.get('name')}")
        if problems:
            return _registry_error(problems)
        try:
            lease_id = self.registry.register(
                name=body.get("name"), namespace=namespace, address=body.get("address"),
                ports=body.get("ports"), labels=body.get("labels"),
                service_account=body.get("serviceAccount") or "default", locality=body.get("locality") or "",
                services=body.get("services") or [], ttl=body.get("ttlSeconds"), weight=body.get("weight", 1),
            )
        except RegistryError as error:
            return _registry_error(error.diagnostics)
        lease = self.registry.lease(lease_id)
        ttl = lease.ttl if lease is not None else self.registry.default_ttl
        return web.json_response({"id": lease_id, "ttlSeconds": ttl})

    async def list_instances(self, request: web.Request) -> web.Response:
        namespace = request.query.get("namespace") or None
        _, instances = self.registry.snapshot()
        hostnames = {(i.namespace, i.name, i.address): i.service_hostnames for i in instances}
        now = self.registry.lease_time()
        items = [
            lease_to_json(lease, now, hostnames.get(
                (lease.instance.namespace, lease.instance.name, lease.instance.address), ()))
            for lease in self.registry.leases() if namespace is None or lease.instance.namespace == namespace
        ]
        return web.json_response({"items": items})

    async def heartbeat(self, request: web.Request) -> web.Response:
        lease_id = request.match_info["id"]
        if not self.registry.heartbeat(lease_id):
            return _error(404, f"instance {lease_id} is not registered (expired or deregistered): register again")
        lease = self.registry.lease(lease_id)
        return web.json_response({"id": lease_id, "ttlSeconds": lease.ttl if lease else self.registry.default_ttl})

    async def deregister_instance(self, request: web.Request) -> web.Response:
        lease_id = request.match_info["id"]
        if not self.registry.deregister(lease_id):
            return _error(404, f"instance {lease_id} is not registered")
        return web.json_response({"deregistered": lease_id})

    # --- debug ---------------------------------------------------------------------------

    async def debug_proxies(self, request: web.Request) -> web.Response:
        status = [] if self.xds_status is None else await _maybe_await(self.xds_status())
        proxies = status.get("proxies", []) if isinstance(status, dict) else list(status or [])
        return web.json_response({"proxies": proxies})

    async def debug_config(self, request: web.Request) -> web.Response:
        proxy_id = request.match_info["proxy_id"]
        wanted = request.query.get("type")
        if wanted is not None and wanted not in CONFIG_TYPES:
            return _error(400, f"unknown type {wanted!r}; one of {', '.join(CONFIG_TYPES)}")
        if self.config_view is None:
            return _error(404, f"no configuration for proxy {proxy_id!r}")
        resources: list[Any] = []
        for config_type in [wanted] if wanted else list(CONFIG_TYPES):
            found = await _maybe_await(self.config_view(proxy_id, config_type))
            if found is None:
                return _error(404, f"proxy {proxy_id!r} is not known to the control plane")
            resources.extend(_plain_json(item) for item in found)
        return web.json_response({"resources": resources})


# --- request helpers --------------------------------------------------------------------


@web.middleware
async def _json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    """Unexpected failures answer JSON with a message instead of aiohttp's HTML page."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as error:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, f"internal error: {type(error).__name__}: {error}")


def _as_document_stream(text: str) -> str:
    """A JSON list of resources as one ``kind: List`` document, which ``load_documents`` expands."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except ValueError:
            return text  # let the parser report where it breaks
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    return text


def _kind_errors(resources: list[Resource]) -> list[Diagnostic]:
    errors: list[Diagnostic] = []
    for resource in resources:
        problem = check_kind(resource.kind, resource.api_version)  # the judgement `tulle analyze` makes too
        if problem is not None:
            errors.append(Diagnostic("error", resource.ref, *problem, resource.source))
        elif resource.kind == SERVICE_KIND:
            errors.extend(validate_service(resource))
    return errors


def _canonical_kind(kind: str) -> str:
    """``virtualservice`` and ``VirtualService`` name the same kind in paths and queries."""
    for known in KNOWN_KINDS:
        if known.lower() == kind.lower():
            return known
    return kind


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    return _parse_json_object(await request.read())


def _parse_json_object(raw: bytes) -> dict[str, Any] | web.Response:
    problem = ""
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except ValueError as error:
        problem = f"the body is not valid JSON: {error}"
    else:
        if not isinstance(body, dict):
            problem = "the body must be a JSON object"
    if problem:
        return _error(400, problem, errors=[diagnostic_to_json(Diagnostic("error", "", "", problem))])
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def _registry_body(request: web.Request) -> dict[str, Any] | web.Response:
    """A registry request's JSON object; 413 past MAX_REGISTRY_BODY_BYTES, without reading further."""
    raw = bytearray()
    if request.content_length is None or request.content_length <= MAX_REGISTRY_BODY_BYTES:
        while len(raw) <= MAX_REGISTRY_BODY_BYTES:
            chunk = await request.content.read(MAX_REGISTRY_BODY_BYTES + 1 - len(raw))
            if not chunk:
                return _parse_json_object(bytes(raw))
            raw += chunk
    message = f"the body is larger than {MAX_REGISTRY_BODY_BYTES} bytes: a registration is a small JSON object"
    return _error(413, message, errors=[diagnostic_to_json(Diagnostic("error", "", "", message))])


def _registry_error(diagnostics: list[Diagnostic]) -> web.Response:
    """400 with every problem as a diagnostic naming its field (the shape resource errors have)."""
    return _error(400, "; ".join(str(diagnostic) for diagnostic in diagnostics),
                  errors=[diagnostic_to_json(diagnostic) for diagnostic in diagnostics])


def _unknown_fields(body: dict[str, Any], known: tuple[str, ...], ref: str) -> list[Diagnostic]:
    return [Diagnostic("error", ref, str(key)[:MAX_LABEL_LENGTH], f"unknown field; known: {', '.join(known)}")
            for key in sorted(body, key=str) if key not in known]


def _parse_batch(text: str, source: str, namespace: str) -> tuple[list[Resource], list[Diagnostic], list[Diagnostic]]:
    """``(resources, errors, warnings)`` of an apply body: parsing and kind checks (CPU-bound: run off the loop)."""
    resources, parse_diagnostics = load_documents(_as_document_stream(text), source, namespace)
    errors = [d for d in parse_diagnostics if d.level == "error"]
    warnings = [d for d in parse_diagnostics if d.level != "error"]
    if not errors:
        errors.extend(_kind_errors(resources))
    return resources, errors, warnings


def _delete_key(item: Any) -> tuple[str, str, str] | str:
    """One ``items[]`` entry of a bulk delete as a store key, or what is wrong with it."""
    if not isinstance(item, dict):
        return "must be an object {kind, namespace, name}"
    unknown = [str(key) for key in item if key not in ("kind", "namespace", "name")]
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; known: kind, namespace, name"
    kind, namespace, name = item.get("kind"), item.get("namespace", "default"), item.get("name")
    if not all(isinstance(value, str) and value for value in (kind, namespace, name)):
        return "kind, namespace and name must be non-empty strings"
    return _canonical_kind(kind), namespace, name


async def _off_loop(function: Callable[..., Any], *args: Any) -> Any:
    """Call a plain function in a worker thread; await a coroutine function on the loop."""
    if inspect.iscoroutinefunction(function):
        return await function(*args)
    return await _maybe_await(await asyncio.to_thread(function, *args))
