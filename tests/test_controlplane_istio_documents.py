"""Multi-document YAML -> Resources: document numbering, bad documents, Lists, metadata."""

from __future__ import annotations

import json
from pathlib import Path

from tulle.controlplane.istio.documents import field_line, load_documents, load_files

DATA = Path(__file__).parent / "data" / "istio"


def _vs(name: str, namespace: str | None = None) -> str:
    namespace_line = f"\n  namespace: {namespace}" if namespace else ""
    return (f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}{namespace_line}\n"
            f"spec:\n  hosts: [{name}]\n")


def test_documents_are_numbered_and_keep_everything_as_written() -> None:
    text = _vs("a", "prod") + "---\n" + _vs("b")
    resources, diagnostics = load_documents(text, "mesh.yaml")
    assert diagnostics == []
    assert [(r.name, r.namespace, r.source) for r in resources] == [
        ("a", "prod", "mesh.yaml#1"), ("b", "default", "mesh.yaml#2")]
    assert resources[0].kind == "VirtualService"
    assert resources[0].api_version == "networking.istio.io/v1"
    assert resources[0].spec == {"hosts": ["a"]}


def test_leading_marker_comments_and_empty_documents_are_skipped() -> None:
    text = "# a comment\n---\n" + _vs("a") + "---\n---\n# only a comment\n---\n" + _vs("b") + "...\n"
    resources, diagnostics = load_documents(text, "f.yaml")
    assert diagnostics == []
    # Empty documents count, so #N still points at the N-th document of the file.
    assert [(r.name, r.source) for r in resources] == [("a", "f.yaml#1"), ("b", "f.yaml#4")]


def test_bad_document_in_the_middle_is_reported_and_the_others_load() -> None:
    bad = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: broken\n bad: indent\n"
    text = _vs("first") + "---\n" + bad + "---\n" + _vs("last")
    resources, diagnostics = load_documents(text, "mesh.yaml")
    assert [r.name for r in resources] == ["first", "last"]
    assert [r.source for r in resources] == ["mesh.yaml#1", "mesh.yaml#3"]
    assert len(diagnostics) == 1
    problem = diagnostics[0]
    assert problem.level == "error"
    assert problem.source == "mesh.yaml#2"
    # The bad line is line 5 of the second document, line 11 of the file.
    bad_line = text.splitlines().index(" bad: indent") + 1
    assert f"line {bad_line}," in problem.message
    assert str(problem).startswith("mesh.yaml#2: invalid YAML at line")


def test_duplicate_keys_are_refused_like_kubectl() -> None:
    _, diagnostics = load_documents(_vs("a") + "kind: Gateway\n", "f.yaml")
    assert len(diagnostics) == 1
    assert "duplicate key 'kind'" in diagnostics[0].message
    assert "line 7" in diagnostics[0].message


def test_kind_list_is_expanded() -> None:
    text = ("apiVersion: v1\nkind: List\nitems:\n"
            "- apiVersion: networking.istio.io/v1\n  kind: Gateway\n  metadata: {name: g1, namespace: edge}\n"
            "  spec: {servers: []}\n"
            "- apiVersion: networking.istio.io/v1\n  kind: DestinationRule\n  metadata: {name: d1}\n"
            "  spec: {host: reviews}\n")
    resources, diagnostics = load_documents(text, "list.yaml")
    assert diagnostics == []
    assert [(r.kind, r.name, r.namespace, r.source) for r in resources] == [
        ("Gateway", "g1", "edge", "list.yaml#1.items[0]"),
        ("DestinationRule", "d1", "default", "list.yaml#1.items[1]"),
    ]


def test_bad_list_item_is_reported_with_its_index() -> None:
    text = ("apiVersion: v1\nkind: List\nitems:\n- 3\n"
            "- apiVersion: networking.istio.io/v1\n  kind: Gateway\n  metadata: {name: ok}\n")
    resources, diagnostics = load_documents(text, "list.yaml")
    assert [r.name for r in resources] == ["ok"]
    assert [(d.source, d.field) for d in diagnostics] == [("list.yaml#1", "items[0]")]


def test_metadata_name_is_required() -> None:
    text = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  namespace: x\nspec: {}\n"
    resources, diagnostics = load_documents(text, "f.yaml")
    assert resources == []
    assert [(d.level, d.field, d.message) for d in diagnostics] == [("error", "metadata.name", "required field missing")]


def test_missing_kind_and_api_version_are_reported() -> None:
    resources, diagnostics = load_documents("metadata: {name: x}\n", "f.yaml")
    assert resources == []
    assert {d.field for d in diagnostics} == {"kind", "apiVersion"}


def test_misspelt_envelope_fields_are_refused_with_a_suggestion() -> None:
    text = ("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, lables: {a: b}}\n"
            "sepc: {servers: []}\n")
    resources, diagnostics = load_documents(text, "f.yaml")
    assert resources == []
    messages = {d.field: d.message for d in diagnostics}
    assert "did you mean 'spec'" in messages["sepc"]
    assert "did you mean 'labels'" in messages["metadata.lables"]


def test_default_namespace_argument_and_labels() -> None:
    text = ("apiVersion: networking.istio.io/v1\nkind: Gateway\n"
            "metadata: {name: g, labels: {app: edge}, annotations: {note: hi}}\n")
    resources, _ = load_documents(text, "f.yaml", default_namespace="edge-ns")
    assert resources[0].namespace == "edge-ns"
    assert resources[0].labels == {"app": "edge"}
    assert resources[0].annotations == {"note": "hi"}


def test_non_string_label_values_must_be_quoted() -> None:
    text = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, labels: {version: 1}}\n"
    resources, diagnostics = load_documents(text, "f.yaml")
    assert resources == []
    assert diagnostics[0].field == "metadata.labels[version]"
    assert "quote" in diagnostics[0].message


def test_scalar_and_list_documents_are_refused() -> None:
    resources, diagnostics = load_documents("just text\n---\n- a\n", "f.yaml")
    assert resources == []
    assert [d.source for d in diagnostics] == ["f.yaml#1", "f.yaml#2"]
    assert all("expected a mapping" in d.message for d in diagnostics)


def test_spec_must_be_a_mapping() -> None:
    text = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: [1]\n"
    resources, diagnostics = load_documents(text, "f.yaml")
    assert resources == []
    assert diagnostics[0].field == "spec"


def test_json_with_tabs_loads() -> None:
    document = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "g"}}
    resources, diagnostics = load_documents(json.dumps(document, indent="\t"), "g.json")
    assert diagnostics == []
    assert resources[0].source == "g.json#1"


def test_load_files_reads_files_and_directories(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(_vs("b"))
    (tmp_path / "a.yml").write_text(_vs("a"))
    (tmp_path / "notes.txt").write_text("not config")
    single = tmp_path / "single.yaml"
    single.write_text(_vs("single"))
    nested = tmp_path / "nested"
    nested.mkdir()
    (nested / "c.yaml").write_text(_vs("c"))
    resources, diagnostics = load_files([tmp_path])
    assert diagnostics == []
    assert [r.name for r in resources] == ["a", "b", "single", "c"]
    assert resources[0].source == f"{tmp_path / 'a.yml'}#1"
    resources, _ = load_files([str(single)])
    assert [r.name for r in resources] == ["single"]


def test_unreadable_file_is_a_diagnostic(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    resources, diagnostics = load_files([missing])
    assert resources == []
    assert diagnostics[0].source == str(missing)
    assert "cannot read file" in diagnostics[0].message


def test_fixture_file_loads_completely() -> None:
    resources, diagnostics = load_files([DATA / "valid.yaml"])
    assert diagnostics == []
    kinds = {r.kind for r in resources}
    assert kinds == {"VirtualService", "DestinationRule", "Gateway", "ServiceEntry", "WorkloadEntry", "Sidecar"}


def test_yaml_is_read_as_kubectl_reads_it_so_an_unquoted_ipv6_address_is_a_string() -> None:
    text = ("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se}\n"
            "spec:\n  hosts: [example.com]\n  addresses: [1.2.3.4, 001:db8::]\n"
            "  ports: [{name: http, number: 80, protocol: HTTP}]\n  subjectAltNames: [1:20, 2024-01-02]\n")
    resources, diagnostics = load_documents(text, "se.yaml")
    assert diagnostics == []
    assert resources[0].spec["addresses"] == ["1.2.3.4", "001:db8::"]
    assert resources[0].spec["subjectAltNames"] == ["1:20", "2024-01-02"]


def test_kinds_whose_crd_requires_spec_are_refused_without_one() -> None:
    text = ("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm}\n---\n"
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default}\n")
    resources, diagnostics = load_documents(text, "f.yaml")
    assert [(d.source, d.resource, d.field, d.message) for d in diagnostics] == [
        ("f.yaml#1", "WorkloadEntry default/vm", "spec", "required field missing")]
    assert [r.kind for r in resources] == ["Sidecar"]  # Sidecar's CRD does not require spec


def test_positions_give_the_line_of_each_field_or_its_nearest_written_parent() -> None:
    text = "# header\n" + _vs("a") + "---\n" + ("apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n"
                                               "  kind: DestinationRule\n  metadata: {name: d}\n  spec:\n"
                                               "    host: reviews\n    subsets:\n    - name: v1\n")
    resources, _ = load_documents(text, "f.yaml", positions=True)
    vs, rule = resources
    assert field_line(vs, "") == 2  # apiVersion, after the comment
    assert field_line(vs, "spec.hosts") == 7
    assert field_line(vs, "spec.hosts[0]") == 7
    assert field_line(vs, "spec.http[0].route") == 6  # not written: its nearest parent, spec
    assert field_line(rule, "spec.subsets[0].name") == 18
    assert field_line(rule, "") == 12
    assert load_documents(text, "f.yaml")[0][0].positions == {}  # only when asked for
