"""File-based xDS (Envoy's ``path_config_source``) for ``dynamic_resources.lds_config`` and
``cds_config``: the listeners or clusters are a ``DiscoveryResponse`` in a YAML or JSON file
(``resources:`` with ``@type``, optional ``version_info``), applied at start and again whenever the
file is replaced or rewritten.

Envoy watches the file's directory for a file moved into place (write elsewhere, then ``mv``);
here the file's identity (inode, size, modification time) is checked every ``POLL_INTERVAL``
seconds, which sees both a ``mv`` and an in-place write, without an inotify dependency. A file that
does not parse, names a resource of another type, or holds a resource the proxy refuses is
rejected whole (``update_rejected``), and the previous config keeps serving, as with ADS.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from tulle.config.errors import ConfigError
from tulle.config.loader import parse_message, read_document, type_name_of, unpack_any
from tulle.xds_client.apply import UpdateRejected, XdsApplier, resource_name
from tulle.xds_client.stats import SubscriptionStats

log = logging.getLogger("tulle.xds")

POLL_INTERVAL = 0.25  # seconds between checks of the file's identity


def read_resources(path: str, type_url: str) -> tuple[str, dict[str, Any]]:
    """(version_info, resources by name) from the file; ConfigError names what is wrong."""
    document = read_document(path)
    response = parse_message(document, discovery_pb2.DiscoveryResponse, source=path)
    expected = type_url.rsplit("/", 1)[-1]
    resources: dict[str, Any] = {}
    for index, value in enumerate(response.resources):
        field = f"resources[{index}]"
        if type_name_of(value) != expected:
            raise ConfigError(f"a {type_name_of(value) or 'resource without @type'} where {expected} belongs",
                              field=field, source=path)
        resource = unpack_any(value, field=field)
        name = resource_name(resource)
        if name in resources:
            raise ConfigError(f"resource {name!r} appears twice", field=field, source=path)
        resources[name] = resource
    return response.version_info, resources


class FileSubscription:
    """One ``path_config_source``: the file, the type of its resources, where they are applied."""

    def __init__(self, path: str, type_url: str, applier: XdsApplier, stats: SubscriptionStats, *,
                 on_applied: Callable[[str, dict[str, Any], set[str], bool], None] | None = None) -> None:
        self.path = path
        self.type_url = type_url
        self.applier = applier
        self.stats = stats
        self.on_applied = on_applied
        self.identity: tuple[int, int, int] | None = None  # (inode, size, mtime ns) of the file last read
        self.names: set[str] = set()  # what the last applied file held

    def _current_identity(self) -> tuple[int, int, int] | None:
        try:
            status = os.stat(self.path)
        except OSError:
            return None
        return status.st_ino, status.st_size, status.st_mtime_ns

    async def check(self) -> bool:
        """Apply the file if it changed since it was last read; True when an update was applied."""
        identity = self._current_identity()
        if identity is None or identity == self.identity:
            return False
        self.identity = identity
        started = time.monotonic()
        try:
            version, resources = read_resources(self.path, self.type_url)
            removed = self.names - set(resources)
            await self.applier.apply(self.type_url, resources, removed, True)
        except (ConfigError, UpdateRejected, OSError) as exc:
            self.stats.rejected()
            log.error("xDS file %s rejected, the previous config keeps serving: %s", self.path, exc)
            return False
        self.names = set(resources)
        self.stats.accepted(version, (time.monotonic() - started) * 1000)
        log.info("xDS file %s applied: %d resource(s), version %r", self.path, len(resources), version)
        if self.on_applied is not None:
            self.on_applied(self.type_url, resources, removed, True)
        return True

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(POLL_INTERVAL)
