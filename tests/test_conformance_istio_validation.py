"""Istio's own CRD validation cases: Tulle accepts what Istio accepts and refuses what it refuses.

The corpus (``shared/conformance/istio-validation`` beside the repository, see its README) is
istio/istio's ``pkg/config/validation/testdata/crds``, unchanged: every document of a
``*-valid.yaml`` file must be accepted; every document of a ``*-invalid.yaml`` file must be refused,
and the ``_err`` key above it (not part of the resource, stripped here) says what the Kubernetes API
server reports. Documents go through what ``tulle apply`` and ``tulle analyze`` run: the YAML reader
(``load_documents``) and the analysis (``analyze``, which validates each resource).

Kinds Tulle supports must match Istio case by case. A Tulle error "names the field of ``_err``" when
``_err`` is ``<path>: Required value`` and an error's field is that path; ``<path>: <other reason>``
and an error's field is the path or below it; otherwise ``_err`` is the message of a CEL rule of the
CRD, and an error's field must be the field that rule is written on (CEL_RULE_FIELDS; Tulle's
message is the webhook's, which istioctl shows). Each document is analyzed on its own, as the API
server admits each on its own. Kinds Tulle does not read yet must be refused as unsupported, valid
or not.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tulle.controlplane.istio import NETWORKING_KINDS, analyze, load_documents
from tulle.controlplane.model import Diagnostic


def _find_corpus() -> Path | None:
    """``shared/conformance/istio-validation`` beside the checkout (or beside a directory holding it)."""
    for ancestor in Path(__file__).resolve().parents[1].parents:
        candidate = ancestor / "shared" / "conformance" / "istio-validation"
        if candidate.is_dir():
            return candidate
    return None


CORPUS = _find_corpus()
pytestmark = pytest.mark.skipif(
    CORPUS is None, reason="Istio's validation corpus (shared/conformance/istio-validation beside the repository) "
                           "is not there")

_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)
_ERR_LINE = re.compile(r"^_err:[ \t]*(?P<value>.*)$", re.MULTILINE)
_KIND_LINE = re.compile(r"^kind:[ \t]*(?P<kind>\S+)", re.MULTILINE)
_FIELD_ERR = re.compile(r"^(?P<path>[A-Za-z0-9_.\[\]]+): (?P<reason>[A-Z][a-z]+ value)$")


# The CRDs' CEL rules report a message and no field (``spec: Invalid value: "object": <message>``); the
# field each rule is written on, as Tulle's error must name it (or a field below it).
CEL_RULE_FIELDS = {
    "wildcard is not supported in selector": "spec.workloadSelector.labels",
    "only one of WorkloadSelector or Endpoints can be set": "spec.workloadSelector",
    "hostname cannot be wildcard": "spec.hosts[0]",
    "CIDR addresses are allowed only for NONE/STATIC resolution types": "spec.addresses",
    "Duplicate value": "spec.ports[1].name",  # the ports list's map key is the name
    "port number cannot be duplicated": "spec.ports[1].number",
    "NONE mode cannot set endpoints": "spec.endpoints",
    "DNS_ROUND_ROBIN mode cannot have multiple endpoints": "spec.endpoints",
    "Address is required": "spec.address",
    "UDS may not be a dir": "spec.address",
    "UDS must be an absolute path or abstract socket": "spec.address",
    "UDS may not include ports": "spec.ports",
}
# The same message on several fields: which one, per document.
CEL_RULE_FIELDS_BY_CASE = {
    "serviceentry-invalid.yaml#9": "spec.ports[0].number",
    "serviceentry-invalid.yaml#10": "spec.ports[0].targetPort",
    "workloadentry-invalid.yaml#6": "spec.ports[http]",
}


@dataclass(frozen=True)
class Case:
    file: str
    number: int  # 1-based document number in the file, as load_documents counts them
    kind: str
    err: str  # "" in a *-valid.yaml file

    @property
    def id(self) -> str:
        return f"{self.file}#{self.number}"


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _cases(suffix: str) -> list[Case]:
    if CORPUS is None:
        return []
    cases = []
    for path in sorted(CORPUS.glob(f"*-{suffix}.yaml")):
        for number, chunk in enumerate(_SEPARATOR.split(path.read_text()), start=1):
            kind = _KIND_LINE.search(chunk)
            if kind is None:  # only comments (commented-out cases)
                continue
            err = _ERR_LINE.search(chunk)
            cases.append(Case(path.name, number, kind.group("kind"), _unquote(err.group("value")) if err else ""))
    return cases


VALID = _cases("valid")
INVALID = _cases("invalid")


@functools.cache
def _file_errors(name: str) -> dict[str, list[Diagnostic]]:
    """Every error about the file's documents, by ``file#N``: ``_err`` lines blanked, so lines stay put."""
    assert CORPUS is not None
    text = _ERR_LINE.sub("", (CORPUS / name).read_text())
    resources, diagnostics = load_documents(text, name)
    found: dict[str, list[Diagnostic]] = {}
    for diagnostic in [*diagnostics, *(d for r in resources for d in analyze([r]))]:
        if diagnostic.level == "error":
            found.setdefault(diagnostic.source.split(".items[")[0], []).append(diagnostic)
    return found


def _errors(case: Case) -> list[Diagnostic]:
    return _file_errors(case.file).get(case.id, [])


def _names_the_field(error: Diagnostic, case: Case) -> bool:
    match = _FIELD_ERR.match(case.err)
    if match is None:
        path = CEL_RULE_FIELDS_BY_CASE.get(case.id) or CEL_RULE_FIELDS.get(case.err)
        if path is None:
            return case.err.lower() in error.message.lower()
    else:
        path = match.group("path")
        if match.group("reason") == "Required value":
            return error.field == path
    return error.field == path or error.field.startswith((f"{path}.", f"{path}["))


def test_the_corpus_has_cases_for_supported_and_unsupported_kinds() -> None:
    kinds = {case.kind for case in VALID + INVALID}
    assert kinds & set(NETWORKING_KINDS), "no case for a kind Tulle supports"
    assert kinds - set(NETWORKING_KINDS), "no case for a kind Tulle does not support"
    assert all(case.err for case in INVALID if case.kind in NETWORKING_KINDS)


@pytest.mark.parametrize("case", [c for c in VALID if c.kind in NETWORKING_KINDS], ids=lambda c: c.id)
def test_valid_documents_of_supported_kinds_are_accepted(case: Case) -> None:
    assert [str(e) for e in _errors(case)] == []


@pytest.mark.parametrize("case", [c for c in INVALID if c.kind in NETWORKING_KINDS], ids=lambda c: c.id)
def test_invalid_documents_of_supported_kinds_are_refused_naming_the_field(case: Case) -> None:
    errors = _errors(case)
    assert errors, f"accepted, but Istio refuses it: {case.err}"
    assert any(_names_the_field(error, case) for error in errors), (
        f"refused, but no error names {case.err!r}: {[str(e) for e in errors]}")


@pytest.mark.parametrize("case", [c for c in VALID + INVALID if c.kind not in NETWORKING_KINDS],
                         ids=lambda c: c.id)
def test_documents_of_unsupported_kinds_are_refused_as_unsupported(case: Case) -> None:
    errors = _errors(case)
    assert [(e.field, case.kind in e.message, "not supported" in e.message) for e in errors] == [
        ("kind", True, True)], [str(e) for e in errors]
