"""``meshplane analyze``: each finding code fires on the object at fault, and stays quiet on a near twin.

Every case starts from a small valid baseline (below: a mesh, two services, a canary route table, a
gateway and the access policy that lets the gateway call ``web`` and ``web`` call ``reviews``), which
has no finding at all. A case lists the edits that produce its finding (``bad``) and the edits of a
near-identical input that must not (``good``). Both inputs must pass validation: analysis is about
configuration that is accepted and still does not work as meant.
"""

from __future__ import annotations

import io
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshplane.controlplane.analyze import CODES, Finding, Severity, analyze
from meshplane.controlplane.cli import main
from meshplane.controlplane.model import AnyObject, parse_object
from meshplane.controlplane.validation import validate
from meshplane.controlplane.world import Index
from tests.controlplane.test_validation import DROP, apply_change

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "osok" / "samples"

BASELINE = """\
apiVersion: servicemesh.oci.oracle.com/v1beta1
kind: Mesh
metadata: {name: shop-mesh, namespace: shop}
spec:
  mtls: {minimum: PERMISSIVE}
---
apiVersion: servicemesh.oci.oracle.com/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  mesh: {ref: {name: shop-mesh}}
  hosts: [reviews.shop]
  mtls: {mode: STRICT}
---
apiVersion: servicemesh.oci.oracle.com/v1beta1
kind: VirtualDeployment
metadata: {name: reviews-v1, namespace: shop}
spec:
  virtualService: {ref: {name: reviews}}
  serviceDiscovery: {type: DNS, hostname: reviews-v1.shop}
  listener: [{protocol: HTTP, port: 9080}]
---
apiVersion: servicemesh.oci.oracle.com/v1beta1
kind: VirtualDeployment
metadata: {name: reviews-v2, namespace: shop}
spec:
  virtualService: {ref: {name: reviews}}
  serviceDiscovery: {type: DNS, hostname: reviews-v2.shop}
  listener: [{protocol: HTTP, port: 9080}]
---
apiVersion: servicemesh.oci.oracle.com/v1beta1
kind: VirtualServiceRouteTable
metadata: {name: reviews-canary, namespace: shop}
spec:
  virtualService: {ref: {name: reviews}}
  routeRules:
    - httpRoute:
        destinations:
          - {virtualDeployment: {ref: {name: reviews-v1}}, weight: 90, port: 9080}
          - {virtualDeployment: {ref: {name: reviews-v2}}, weight: 10, port: 9080}
---
apiVersion: servicemesh.oci.oracle.com/v1beta1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  mesh: {ref: {name: shop-mesh}}
  hosts: [web.shop]
  mtls: {mode: STRICT}
---
apiVersion: servicemesh.oci.oracle.com/v1beta1
kind: VirtualDeployment
metadata: {name: web-v1, namespace: shop}
spec:
  virtualService: {ref: {name: web}}
  serviceDiscovery: {type: DNS, hostname: web-v1.shop}
  listener: [{protocol: HTTP, port: 8080}]
---
apiVersion: servicemesh.oci.oracle.com/v1beta1
kind: IngressGateway
metadata: {name: shop-gw, namespace: shop}
spec:
  mesh: {ref: {name: shop-mesh}}
  hosts:
    - name: public
      hostnames: [shop.example.com]
      listeners: [{protocol: HTTP, port: 8080, tls: {mode: DISABLED}}]
---
apiVersion: servicemesh.oci.oracle.com/v1beta1
kind: AccessPolicy
metadata: {name: shop-policy, namespace: shop}
spec:
  mesh: {ref: {name: shop-mesh}}
  rules:
    - action: ALLOW
      source: {ingressGateway: {ref: {name: shop-gw}}}
      destination: {virtualService: {ref: {name: web}}}
    - action: ALLOW
      source: {virtualService: {ref: {name: web}}}
      destination: {virtualService: {ref: {name: reviews}}}
"""

Manifest = dict[str, Any]
Docs = dict[str, Manifest]  # "Kind/name" → manifest
Edit = Callable[[Docs], None]


# ------------------------------------------------------------------------------------------ helpers


def baseline() -> Docs:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(BASELINE)}


def change(target: str, changes: dict[str, Any]) -> Edit:
    """Set (or with DROP remove) fields of one baseline object, by dotted wire path (``a.b[0].c``)."""
    def edit(docs: Docs) -> None:
        for path, value in changes.items():
            apply_change(docs[target], path, value)
    return edit


def add(text: str) -> Edit:
    """Add (or replace) objects given as YAML documents."""
    def edit(docs: Docs) -> None:
        for doc in yaml.safe_load_all(textwrap.dedent(text)):
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return edit


def objects(edits: Sequence[Edit] = ()) -> list[AnyObject]:
    """The baseline with ``edits``, parsed; every object must pass validation (warnings are allowed)."""
    docs = baseline()
    for edit in edits:
        edit(docs)
    parsed = []
    for doc in docs.values():
        obj, problems = parse_object(doc)
        assert obj is not None, problems
        parsed.append(obj)
    world = Index(parsed, authoritative=False)
    for obj in parsed:
        errors = [p for p in validate(None, obj, world) if p.is_error]
        assert not errors, f"{obj.key}: {errors}"
    return parsed


def lint(edits: Sequence[Edit] = ()) -> list[Finding]:
    return analyze(Index(objects(edits), authoritative=False))


def about(finding: Finding) -> str:
    return f"{finding.kind} {finding.namespace}/{finding.name}"


# -------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """``bad`` gives finding ``code`` about object ``about`` (and maybe others); ``good`` gives no ``code``."""

    id: str
    code: str
    about: str
    bad: tuple[Edit, ...]
    good: tuple[Edit, ...]
    says: str = ""  # a phrase the finding's message must contain


EGRESS_ONLY = {"spec.serviceDiscovery": DROP, "spec.listener": DROP}
TABLE = "VirtualServiceRouteTable/reviews-canary"
RULE = "spec.routeRules[0].httpRoute"
OTHER_MESH = """\
    apiVersion: servicemesh.oci.oracle.com/v1beta1
    kind: Mesh
    metadata: {name: other-mesh, namespace: shop}
    spec: {mtls: {minimum: PERMISSIVE}}
    ---
    apiVersion: servicemesh.oci.oracle.com/v1beta1
    kind: VirtualService
    metadata: {name: ledger, namespace: shop}
    spec: {mesh: {ref: {name: MESH}}, hosts: [ledger.shop], mtls: {mode: STRICT}}
    """
REVIEWS_NEXT = """\
    apiVersion: servicemesh.oci.oracle.com/v1beta1
    kind: VirtualService
    metadata: {name: reviews-next, namespace: shop}
    spec: {mesh: {ref: {name: shop-mesh}}, hosts: [HOST], mtls: {mode: STRICT}}
    """
CLIENT_ONLY = """\
    apiVersion: servicemesh.oci.oracle.com/v1beta1
    kind: VirtualService
    metadata: {name: batch, namespace: shop}
    spec: {mesh: {ref: {name: shop-mesh}}, HOSTS mtls: {mode: STRICT}}
    ---
    apiVersion: servicemesh.oci.oracle.com/v1beta1
    kind: VirtualDeployment
    metadata: {name: batch-v1, namespace: shop}
    spec: {virtualService: {ref: {name: batch}}}
    """
TCP_RULE = {"tcpRoute": {"destinations": [
    {"virtualDeployment": {"ref": {"name": "reviews-v1"}}, "weight": 90, "port": 9080},
    {"virtualDeployment": {"ref": {"name": "reviews-v2"}}, "weight": 10, "port": 9080}]}}
RAISING_MESH = {"spec.mtls.minimum": "STRICT", "status": {"meshMtls": {"minimum": "PERMISSIVE"}}}

CASES = [
    Case("MA001:egress-only-destination", "MA001", "VirtualServiceRouteTable shop/reviews-canary",
         bad=(change("VirtualDeployment/reviews-v2", EGRESS_ONLY),),
         good=(change("VirtualDeployment/reviews-v2", EGRESS_ONLY),
               change(TABLE, {f"{RULE}.destinations[1].weight": 0})),
         says="VirtualDeployment shop/reviews-v2 can have no endpoints"),
    Case("MA001:no-listener-on-port", "MA001", "VirtualServiceRouteTable shop/reviews-canary",
         bad=(change("VirtualDeployment/reviews-v2", {"spec.listener[0].port": 9090}),),
         good=(change("VirtualDeployment/reviews-v2", {"spec.listener[0].port": 9090}),
               change(TABLE, {f"{RULE}.destinations[0].port": DROP, f"{RULE}.destinations[1].port": DROP})),
         says="has no listener on port 9080"),
    Case("MA001:protocol-mismatch", "MA001", "VirtualServiceRouteTable shop/reviews-canary",
         bad=(change(TABLE, {"spec.routeRules[0]": TCP_RULE}),),
         good=(change(TABLE, {"spec.routeRules[0]": TCP_RULE}),
               change("VirtualDeployment/reviews-v1", {"spec.listener[0].protocol": "TCP"}),
               change("VirtualDeployment/reviews-v2", {"spec.listener[0].protocol": "TCP"})),
         says="tcpRoute rules apply only to TCP listeners, and the listener of VirtualDeployment shop/reviews-v1 "
              "on port 9080 is HTTP"),
    Case("MA001:default-route", "MA001", "VirtualService shop/batch",
         bad=(add(CLIENT_ONLY.replace("HOSTS", "hosts: [batch.shop],")),),
         good=(add(CLIENT_ONLY.replace("HOSTS", "")),),
         says="default route (UNIFORM)"),
    Case("MA002", "MA002", "VirtualServiceRouteTable shop/reviews-canary",
         bad=(change(TABLE, {f"{RULE}.destinations[0].weight": 0, f"{RULE}.destinations[1].weight": 0}),),
         good=(change(TABLE, {f"{RULE}.destinations[0].weight": 0, f"{RULE}.destinations[1].weight": 1}),),
         says="every destination has weight 0"),
    Case("MA003", "MA003", "VirtualService shop/reviews",
         bad=(change("AccessPolicy/shop-policy", {"spec.rules[1].destination": {"virtualService": {
             "ref": {"name": "web"}}}}),),
         good=(change("AccessPolicy/shop-policy", {"spec.rules[1].destination": {"allVirtualServices": {}}}),),
         says="no access policy among the inputs lets anyone call it"),
    Case("MA004:names-nothing", "MA004", "AccessPolicy shop/shop-policy",
         bad=(change("AccessPolicy/shop-policy", {"spec.rules[2]": {
             "action": "ALLOW", "source": {"virtualService": {"ref": {"name": "ghost"}}},
             "destination": {"virtualService": {"ref": {"name": "reviews"}}}}}),),
         good=(change("AccessPolicy/shop-policy", {"spec.rules[2]": {
             "action": "ALLOW", "source": {"virtualService": {"ref": {"name": "reviews"}}},
             "destination": {"virtualService": {"ref": {"name": "reviews"}}}}}),),
         says="spec.rules[2].source.virtualService: VirtualService shop/ghost is not among the inputs"),
    Case("MA004:other-mesh", "MA004", "AccessPolicy shop/shop-policy",
         bad=(add(OTHER_MESH.replace("MESH", "other-mesh")),
              change("AccessPolicy/shop-policy", {"spec.rules[1].destination.virtualService.ref.name": "ledger"})),
         good=(add(OTHER_MESH.replace("MESH", "shop-mesh")),
               change("AccessPolicy/shop-policy", {"spec.rules[1].destination.virtualService.ref.name": "ledger"})),
         says="VirtualService shop/ledger belongs to Mesh shop/other-mesh"),
    Case("MA005", "MA005", "VirtualService shop/reviews-next",
         bad=(add(REVIEWS_NEXT.replace("HOST", "Reviews.Shop")),),
         good=(add(REVIEWS_NEXT.replace("HOST", "reviews-next.shop")),),
         says="'reviews.shop' is also claimed by VirtualService shop/reviews"),
    Case("MA006", "MA006", "VirtualService shop/reviews",
         bad=(change("Mesh/shop-mesh", RAISING_MESH),
              change("VirtualService/reviews", {"spec.mtls.mode": "PERMISSIVE"})),
         good=(change("Mesh/shop-mesh", RAISING_MESH),),
         says="asks for PERMISSIVE, below the mTLS minimum STRICT"),
    Case("MA007", "MA007", "Mesh shop/shop-mesh",
         bad=(change("Mesh/shop-mesh", {"spec.mtls": DROP}),),
         good=(change("Mesh/shop-mesh", {"spec.mtls.minimum": "STRICT"}),),
         says="the mTLS minimum is STRICT"),
    Case("MA008", "MA008", "VirtualService shop/reviews",
         bad=(change("VirtualService/reviews", {"spec.mtls": DROP}),),
         good=(change("VirtualService/reviews", {"spec.mtls": DROP}),
               change("Mesh/shop-mesh", {"spec.mtls.minimum": "STRICT"})),
         says="takes the minimum PERMISSIVE of Mesh shop/shop-mesh"),
    Case("MA009", "MA009", "VirtualService shop/reviews",
         bad=(change("VirtualDeployment/reviews-v1", {"spec.listener[1]": {"protocol": "TLS_PASSTHROUGH",
                                                                           "port": 9443}}),),
         good=(change("VirtualDeployment/reviews-v1", {"spec.listener[1]": {"protocol": "TCP", "port": 9443}}),),
         says="port 9443 of VirtualDeployment shop/reviews-v1 is TLS_PASSTHROUGH"),
]


def test_the_baseline_has_no_finding() -> None:
    assert lint() == []


def test_every_code_has_a_case() -> None:
    assert sorted({case.code for case in CASES}) == sorted(CODES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_finding_appears_on_the_object_at_fault(case: Case) -> None:
    found = [f for f in lint(case.bad) if f.code == case.code]
    assert case.about in {about(f) for f in found}, found
    mine = [f for f in found if about(f) == case.about]
    assert any(case.says in f.message for f in mine), [f.message for f in mine]
    assert all(f.severity is CODES[case.code].severity and f.advice for f in mine)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_near_identical_input_has_no_such_finding(case: Case) -> None:
    assert [f for f in lint(case.good) if f.code == case.code] == []


# ---------------------------------------------------------------------------- finer points, by code


def test_a_host_claimed_twice_is_reported_on_both_services_naming_the_one_that_keeps_it() -> None:
    twin = add(REVIEWS_NEXT.replace("HOST", "reviews.shop"))
    found = {about(f): f.message for f in lint([twin]) if f.code == "MA005"}
    assert set(found) == {"VirtualService shop/reviews", "VirtualService shop/reviews-next"}
    assert "this service keeps the name" in found["VirtualService shop/reviews"]
    assert "VirtualService shop/reviews sorts first" in found["VirtualService shop/reviews-next"]


def test_the_same_host_in_two_meshes_is_no_conflict() -> None:
    other = OTHER_MESH.replace("MESH", "other-mesh").replace("ledger.shop", "reviews.shop")
    assert [f for f in lint([add(other)]) if f.code == "MA005"] == []


def test_a_route_to_a_deployment_not_among_the_inputs_is_left_to_validation() -> None:
    edits = [change(TABLE, {f"{RULE}.destinations[1].virtualDeployment.ref.name": "reviews-v3"})]
    assert [f for f in lint(edits) if f.code == "MA001"] == []


def test_a_policy_naming_an_object_that_failed_validation_is_not_reported_as_naming_nothing() -> None:
    edits = [change("AccessPolicy/shop-policy", {"spec.rules[1].source.virtualService.ref.name": "broken"})]
    broken = yaml.safe_load(REVIEWS_NEXT.replace("reviews-next", "broken").replace("HOST", "bad:80"))
    obj, _ = parse_object(broken)
    assert obj is not None
    world = Index(objects(edits), authoritative=False)
    assert [f for f in analyze(world) if f.code == "MA004"] != []
    assert [f for f in analyze(world, invalid=[obj]) if f.code == "MA004"] == []


def test_a_service_that_only_makes_calls_needs_no_caller() -> None:
    client = CLIENT_ONLY.replace("HOSTS", "")
    assert [f for f in lint([add(client)]) if f.code == "MA003"] == []


def test_findings_are_sorted_by_object_then_code() -> None:
    edits = [change("Mesh/shop-mesh", {"spec.mtls": DROP}), change("VirtualService/reviews", {"spec.mtls": DROP}),
             change(TABLE, {f"{RULE}.destinations[0].weight": 0, f"{RULE}.destinations[1].weight": 0})]
    found = lint(edits)
    assert found == sorted(found, key=Finding.sort_key)
    assert [f.code for f in found] == ["MA007", "MA002"]


def test_each_code_is_documented() -> None:
    text = (ROOT / "docs" / "analyze.md").read_text()
    for code in CODES.values():
        assert f"### {code.code}" in text
        assert code.severity.value in text


# --------------------------------------------------------------------------------------------- CLI


def run(*argv: str) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue().splitlines(), err.getvalue()


def write(tmp_path: Path, name: str, edits: Sequence[Edit] = (), extra: str = "") -> Path:
    docs = baseline()
    for edit in edits:
        edit(docs)
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs.values()) + (f"---\n{textwrap.dedent(extra)}" if extra else ""))
    return path


def test_analyze_prints_one_line_per_finding_and_exits_by_severity(tmp_path: Path) -> None:
    clean = write(tmp_path, "clean.yaml")
    assert run("analyze", "-f", str(clean)) == (
        0, [], "9 mesh object(s) analyzed: 0 warning(s), 0 info, 0 skipped\n")

    info = write(tmp_path, "info.yaml", [change("Mesh/shop-mesh", {"spec.mtls": DROP})])
    code, lines, _ = run("analyze", "-f", str(info))
    assert code == 0
    assert [line.split(":")[0:2] for line in lines] == [["Mesh shop/shop-mesh", " MA007 info"]]

    zero = write(tmp_path, "zero.yaml", [change(TABLE, {f"{RULE}.destinations[0].weight": 0,
                                                        f"{RULE}.destinations[1].weight": 0})])
    code, lines, err = run("analyze", "-f", str(zero))
    assert code == 1
    assert lines == ["VirtualServiceRouteTable shop/reviews-canary: MA002 warning: spec.routeRules[0].httpRoute: "
                     "every destination has weight 0, so the rule takes the requests it matches and answers them "
                     "with 503 (later rules never see them); give at least one destination a positive weight, or "
                     "remove the rule"]
    assert "9 mesh object(s) analyzed: 1 warning(s), 0 info, 0 skipped" in err


def test_analyze_skips_invalid_objects_and_says_so(tmp_path: Path) -> None:
    below_floor = [change("Mesh/shop-mesh", {"spec.mtls.minimum": "STRICT"}),
                   change("VirtualService/web", {"spec.mtls.mode": "PERMISSIVE"})]
    code, lines, err = run("analyze", "-f", str(write(tmp_path, "m.yaml", below_floor)),
                           "-f", str(tmp_path / "missing.yaml"))
    assert code == 1
    assert f"File -/{tmp_path / 'missing.yaml'}: no such file or directory" in lines
    assert ("VirtualService shop/web: skipped: 1 validation error(s); run meshplane validate to see them"
            in lines)
    assert "8 mesh object(s) analyzed" in err and "2 skipped" in err


def test_analyze_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze"], out=io.StringIO(), err=io.StringIO())
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["analyze", "--help"], out=io.StringIO(), err=io.StringIO())
    assert "1 when one is" in " ".join(capsys.readouterr().out.split())


LINE = re.compile(r"^\w+ [a-z0-9.-]+/[a-z0-9.-]+: (MA\d{3} (warning|info): .+; .+|skipped: .+)$")


@pytest.mark.parametrize("path", [ROOT / "examples", SAMPLES], ids=["examples", "osok-samples"])
def test_analyze_runs_over_the_samples(path: Path) -> None:
    if not path.is_dir():
        pytest.skip(f"{path.name} is not beside the repository")
    code, lines, err = run("analyze", "-f", str(path))
    assert code in (0, 1)
    assert all(LINE.match(line) for line in lines), lines
    assert "mesh object(s) analyzed" in err


def test_severities_are_warning_or_info() -> None:
    assert {code.severity for code in CODES.values()} == {Severity.WARNING, Severity.INFO}
