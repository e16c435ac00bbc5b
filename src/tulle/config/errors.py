"""Configuration errors that name the file, the field path and the reason."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration was refused. Nothing of it was applied.

    ``field`` is a dotted proto field path such as
    ``static_resources.listeners[0].filter_chains[0].filters[0]``.
    """

    def __init__(self, message: str, *, field: str = "", source: str = "") -> None:
        self.reason = message
        self.field = field
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = ": ".join(part for part in (self.source, self.field) if part)
        return f"{where}: {self.reason}" if where else self.reason

    def with_source(self, source: str) -> ConfigError:
        self.source = source
        self.args = (self._render(),)
        return self


class UnsupportedFeature(ConfigError):
    """Valid Envoy configuration that Tulle does not implement (yet).

    Refusing is the contract: a proxy that silently ignored, say, a TLS
    transport socket would serve plaintext where the operator asked for TLS.
    """

    def __init__(self, feature: str, *, field: str = "", source: str = "") -> None:
        self.feature = feature
        super().__init__(f"unsupported by Tulle: {feature}", field=field, source=source)


def join(path: str, child: str) -> str:
    """Join field path segments: join('a', 'b') == 'a.b', join('a', '[0]') == 'a[0]'."""
    if not path:
        return child
    return path + child if child.startswith("[") else f"{path}.{child}"
