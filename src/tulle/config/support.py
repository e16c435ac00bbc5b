"""Whitelist checks: any field Tulle does not implement is refused, never ignored.

Every component's config factory calls :func:`check_fields` on each message it
reads with the set of fields it honours. A field that is set (present in
``ListFields``: non-default scalars, non-empty repeated fields, set messages)
but not in the set is refused with its full path, so a bootstrap that asks for
something Tulle would not do fails loudly before anything starts.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import message

from tulle.config.errors import UnsupportedFeature, join


def set_fields(msg: message.Message) -> list[str]:
    return [descriptor.name for descriptor, _ in msg.ListFields()]


def check_fields(
    msg: message.Message,
    supported: Iterable[str],
    field: str,
    *,
    ignored: Iterable[str] = (),
) -> None:
    """Refuse any set field of ``msg`` outside ``supported``.

    ``ignored`` is for fields that are accepted because they cannot change
    behaviour here (e.g. ``name``-only metadata); keep it short and justified.
    """
    allowed = set(supported) | set(ignored)
    for name in set_fields(msg):
        if name not in allowed:
            raise UnsupportedFeature(
                f"{msg.DESCRIPTOR.full_name}.{name}", field=join(field, name)
            )


def refuse(feature: str, field: str) -> UnsupportedFeature:
    return UnsupportedFeature(feature, field=field)


def duration_seconds(duration: message.Message) -> float:
    """google.protobuf.Duration -> float seconds."""
    return duration.seconds + duration.nanos / 1e9  # type: ignore[attr-defined]
