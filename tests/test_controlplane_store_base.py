"""The ConfigStore contract, run against every implementation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tulle.controlplane.model import Resource
from tulle.controlplane.store import ConfigStore, MemoryStore, SqliteStore, StoreError, parse_ref
from tulle.controlplane.store.base import encode, last_per_key


def virtual_service(name: str, namespace: str = "default", hosts: list[str] | None = None, **labels: str) -> Resource:
    return Resource(kind="VirtualService", api_version="networking.istio.io/v1", name=name, namespace=namespace,
                    spec={"hosts": hosts or [name], "http": [{"route": [{"destination": {"host": name}}]}]},
                    labels=labels, source=f"{name}.yaml#1")


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[ConfigStore]:
    chosen: ConfigStore = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "state")
    yield chosen
    chosen.close()


def test_apply_creates_then_updates_and_bumps_generation(store: ConfigStore) -> None:
    created, updated = store.apply([virtual_service("reviews"), virtual_service("ratings")])
    assert sorted(created) == ["VirtualService default/ratings", "VirtualService default/reviews"]
    assert updated == []
    assert store.generation("VirtualService", "default", "reviews") == 1

    created, updated = store.apply([virtual_service("reviews", hosts=["reviews", "reviews.example.com"])])
    assert (created, updated) == ([], ["VirtualService default/reviews"])
    assert store.generation("VirtualService", "default", "reviews") == 2
    assert store.generation("VirtualService", "default", "ratings") == 1
    stored = store.get("VirtualService", "default", "reviews")
    assert stored is not None and stored.spec["hosts"] == ["reviews", "reviews.example.com"]


def test_reapplying_identical_content_changes_nothing(store: ConfigStore) -> None:
    store.apply([virtual_service("reviews")])
    revision = store.revision()
    heard: list[list[str]] = []
    store.subscribe(heard.append)
    again = Resource(**{**virtual_service("reviews").__dict__, "source": "elsewhere.yaml#3"})
    assert store.apply([again]) == ([], [])
    assert store.generation("VirtualService", "default", "reviews") == 1
    assert store.revision() == revision
    assert heard == []


def test_label_change_is_an_update(store: ConfigStore) -> None:
    store.apply([virtual_service("reviews")])
    assert store.apply([virtual_service("reviews", app="reviews")])[1] == ["VirtualService default/reviews"]
    stored = store.get("VirtualService", "default", "reviews")
    assert stored is not None and stored.labels == {"app": "reviews"}


def test_round_trip_keeps_every_field(store: ConfigStore) -> None:
    original = Resource(kind="DestinationRule", api_version="networking.istio.io/v1beta1", name="reviews",
                        namespace="prod", spec={"host": "reviews", "subsets": [{"name": "v1", "labels": {"v": "1"}}]},
                        labels={"team": "a"}, annotations={"note": "x"}, source="dr.yaml#2")
    store.apply([original])
    stored = store.get("DestinationRule", "prod", "reviews")
    assert stored is not None
    assert (stored.api_version, stored.spec, stored.labels, stored.annotations, stored.source) == (
        original.api_version, original.spec, original.labels, original.annotations, original.source)


def test_list_filters_and_sorts(store: ConfigStore) -> None:
    store.apply([virtual_service("b", "prod"), virtual_service("a", "prod"), virtual_service("c", "default"),
                 Resource(kind="Gateway", api_version="networking.istio.io/v1", name="gw", namespace="prod")])
    assert [(r.kind, r.namespace, r.name) for r in store.list()] == [
        ("Gateway", "prod", "gw"), ("VirtualService", "default", "c"),
        ("VirtualService", "prod", "a"), ("VirtualService", "prod", "b")]
    assert [r.name for r in store.list(kind="VirtualService", namespace="prod")] == ["a", "b"]
    assert [r.name for r in store.list(namespace="prod")] == ["gw", "a", "b"]
    assert store.list(kind="Sidecar") == []


def test_failing_resource_leaves_nothing_applied(store: ConfigStore) -> None:
    store.apply([virtual_service("existing")])
    before = store.revision()
    heard: list[list[str]] = []
    store.subscribe(heard.append)
    broken = Resource(kind="VirtualService", api_version="networking.istio.io/v1", name="broken",
                      spec={"hosts": [object()]})
    with pytest.raises(StoreError, match="VirtualService default/broken"):
        store.apply([virtual_service("new"), virtual_service("existing", hosts=["changed"]), broken])
    assert store.get("VirtualService", "default", "new") is None
    existing = store.get("VirtualService", "default", "existing")
    assert existing is not None and existing.spec["hosts"] == ["existing"]
    assert store.revision() == before
    assert heard == []


@pytest.mark.parametrize("bad", [
    Resource(kind="", api_version="networking.istio.io/v1", name="x"),
    Resource(kind="VirtualService", api_version="networking.istio.io/v1", name=""),
    Resource(kind="VirtualService", api_version="", name="x"),
    Resource(kind="VirtualService", api_version="networking.istio.io/v1", name="x", spec={"n": float("nan")}),
    Resource(kind="VirtualService", api_version="networking.istio.io/v1", name="x", labels={"v": 1}),  # type: ignore[dict-item]
])
def test_unstorable_resources_are_refused(store: ConfigStore, bad: Resource) -> None:
    with pytest.raises(StoreError):
        store.apply([bad])
    assert store.list() == []


def test_subscribers_hear_refs_after_commit(store: ConfigStore) -> None:
    seen: list[tuple[list[str], bool]] = []

    def listener(refs: list[str]) -> None:
        # Called after the commit: the change is already visible.
        seen.append((refs, store.get("VirtualService", "default", "reviews") is not None))

    unsubscribe = store.subscribe(listener)
    store.apply([virtual_service("reviews")])
    store.apply([virtual_service("reviews", hosts=["other"])])
    assert store.delete("VirtualService", "default", "reviews")
    assert seen == [(["VirtualService default/reviews"], True), (["VirtualService default/reviews"], True),
                    (["VirtualService default/reviews"], False)]
    unsubscribe()
    store.apply([virtual_service("reviews")])
    assert len(seen) == 3


def test_a_failing_subscriber_does_not_stop_others(store: ConfigStore) -> None:
    heard: list[list[str]] = []

    def broken(refs: list[str]) -> None:
        raise RuntimeError("subscriber bug")

    store.subscribe(broken)
    store.subscribe(heard.append)
    store.apply([virtual_service("reviews")])
    assert heard == [["VirtualService default/reviews"]]


def test_delete_missing_is_false_and_recreate_restarts_generation(store: ConfigStore) -> None:
    assert store.delete("VirtualService", "default", "nope") is False
    store.apply([virtual_service("reviews")])
    store.apply([virtual_service("reviews", hosts=["x"])])
    assert store.delete("VirtualService", "default", "reviews")
    assert store.generation("VirtualService", "default", "reviews") == 0
    store.apply([virtual_service("reviews")])
    assert store.generation("VirtualService", "default", "reviews") == 1


def test_delete_many_is_one_commit_and_all_or_nothing(store: ConfigStore) -> None:
    store.apply([virtual_service("a"), virtual_service("b"), virtual_service("c")])
    heard: list[list[str]] = []
    store.subscribe(heard.append)
    revision = store.revision()
    keys = [("VirtualService", "default", "a"), ("VirtualService", "default", "nope"), ("VirtualService", "default", "b")]
    assert store.delete_many(keys) == ([], ["VirtualService default/nope"])
    assert [r.name for r in store.list()] == ["a", "b", "c"]  # one missing: nothing deleted
    assert (store.revision(), heard) == (revision, [])

    deleted, missing = store.delete_many(keys + [keys[0]], ignore_missing=True)
    assert (deleted, missing) == (["VirtualService default/a", "VirtualService default/b"],
                                  ["VirtualService default/nope"])
    assert [r.name for r in store.list()] == ["c"]
    assert store.revision() == revision + 1  # one commit for the batch
    assert heard == [deleted]


def test_same_key_twice_in_a_batch_keeps_the_last(store: ConfigStore) -> None:
    created, updated = store.apply([virtual_service("reviews", hosts=["first"]),
                                    virtual_service("reviews", hosts=["second"])])
    assert (created, updated) == (["VirtualService default/reviews"], [])
    stored = store.get("VirtualService", "default", "reviews")
    assert stored is not None and stored.spec["hosts"] == ["second"]
    assert store.generation("VirtualService", "default", "reviews") == 1


def test_revision_counts_changing_commits(store: ConfigStore) -> None:
    start = store.revision()
    store.apply([virtual_service("a"), virtual_service("b")])
    store.delete("VirtualService", "default", "a")
    store.delete("VirtualService", "default", "a")  # nothing left to delete: no new revision
    assert store.revision() == start + 2


def test_helpers() -> None:
    assert parse_ref("VirtualService prod/reviews") == ("VirtualService", "prod", "reviews")
    first, second = encode(virtual_service("a", hosts=["1"])), encode(virtual_service("a", hosts=["2"]))
    assert last_per_key([first, encode(virtual_service("b")), second]) == [second, encode(virtual_service("b"))]
    # Key order inside the spec is not content.
    reordered = Resource(kind="X", api_version="g/v1", name="n", spec={"b": 1, "a": 2})
    assert encode(reordered).same_content(encode(Resource(kind="X", api_version="g/v1", name="n",
                                                          spec={"a": 2, "b": 1})))
