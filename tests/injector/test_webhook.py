"""The admission webhook server over real HTTPS: validators, the injector, the envelope, and fuzzing.

One server runs for the whole module, in a thread with its own event loop, under a certificate from a
throwaway CA; every test talks to it with ``http.client`` verifying that CA, as the API server would.
Reviews are shaped like the API server's (``kind``, ``resource``, ``userInfo``, ``options`` …). The
objects come from the canary set of the API reference (§9.1) and the world is that set, accepted.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import http.client
import json
import logging
import os
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshplane.controlplane.model import API_GROUP, API_VERSION, KINDS, Kind, parse_object
from meshplane.controlplane.world import Index, KubeService
from meshplane.injector import inject, webhook
from meshplane.injector.ca import CertificateAuthority
from meshplane.injector.webhook import (
    CERT_FILE,
    KEY_FILE,
    MAX_BODY,
    create_app,
    node_id_for,
    server_ssl_context,
    start,
)
from meshplane.injector.webhookconfig import MUTATE_POD_PATH, validate_path, webhook_configurations
from tests import data

Json = dict[str, Any]
TRUST_DOMAIN = "webhook.test.local"
CANARY: dict[str, Json] = {doc["metadata"]["name"]: doc for doc in data.manifests("canary")}
BY_KIND: dict[Kind, str] = {}
for _name, _doc in CANARY.items():
    BY_KIND.setdefault(Kind(_doc["kind"]), _name)
INJECTION_LABEL = "servicemesh.oci.oracle.com/sidecar-injection"
TIMESTAMP = "2024-05-01T10:00:00Z"

BINDING = inject.Binding(
    key="shop/reviews-v1-binding", deployment="shop/reviews-v1",
    deployment_id="ocid1.meshvirtualdeployment.oc1..reviewsv1", service_namespace="shop", service_found=True,
    selector={"app": "reviews"}, match_labels={"version": "v1"}, resources=None, mount_pki=False, active=True)
SETTINGS = inject.Settings(image="registry.example/meshplane-proxy:1.0", xds_address="meshplane.meshplane-system:15012")


# ------------------------------------------------------------------------------------- the context


def _canary_world() -> Index:
    objects = []
    for doc in CANARY.values():
        obj, problems = parse_object(doc)
        assert obj is not None, problems
        objects.append(obj)
    return Index(objects, [KubeService("shop", "reviews")])


@dataclass
class FakeContext:
    """An AdmissionContext over the canary world, one active binding and a namespace ``shop`` labelled enabled."""

    index: Index = field(default_factory=_canary_world)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    binding_list: list[inject.Binding] = field(default_factory=list)
    injection: inject.Settings | None = SETTINGS
    issued: list[tuple[str, str]] = field(default_factory=list)
    issue: Callable[[str, str], str] | None = None  # replaces the default issuer when set

    def reset(self) -> None:
        self.index = _canary_world()
        self.labels = {"shop": {INJECTION_LABEL: "enabled"}}
        self.binding_list = [BINDING]
        self.injection = SETTINGS
        self.issued = []
        self.issue = None

    def world(self) -> Index:
        return self.index

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        return self.labels.get(namespace)

    def bindings(self) -> Sequence[inject.Binding]:
        return self.binding_list

    def settings(self) -> inject.Settings | None:
        return self.injection

    def issue_credentials(self, node_id: str, deployment: str) -> str:
        if self.issue is not None:
            return self.issue(node_id, deployment)
        self.issued.append((node_id, deployment))
        return f"meshplane-proxy-{len(self.issued)}"


# -------------------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def review(self) -> Json:
        assert self.status == 200, self.body
        document: Json = json.loads(self.body)
        return document

    def response(self) -> Json:
        answer: Json = self.review()["response"]
        return answer


class Server:
    """The webhook app on 127.0.0.1:<free port> in a thread running its own event loop."""

    def __init__(self, context: FakeContext, ca: CertificateAuthority, workdir: Path) -> None:
        self.context, self.workdir = context, workdir
        self.client_tls = ssl.create_default_context(cadata=ca.trust_bundle_pem().decode())
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        tls = server_ssl_context(ca, ["127.0.0.1", "localhost"], workdir)
        self.observed: list[tuple[str, str, float]] = []  # what the metrics hook heard: (webhook, outcome, s)
        app = create_app(context, observe=lambda *seen: self.observed.append(seen))
        self._runner, self.port = self._run(start(app, "127.0.0.1", 0, tls))

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def close(self) -> None:
        self._run(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Reply:
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.client_tls, timeout=30)
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            answer = connection.getresponse()
            return Reply(answer.status, answer.read())
        finally:
            connection.close()

    def post(self, path: str, document: Any) -> Reply:
        return self.request("POST", path, json.dumps(document).encode(), {"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("webhook")
    ca = CertificateAuthority.create_or_load(root / "ca", TRUST_DOMAIN)
    running = Server(FakeContext(), ca, root / "webhook-tls")
    running.context.reset()
    yield running
    running.close()


@pytest.fixture
def ctx(server: Server) -> FakeContext:
    server.context.reset()
    return server.context


# ------------------------------------------------------------------------------------ the reviews


def stored(doc: Json, generation: int = 1, **status: Any) -> Json:
    """``doc`` as the API server holds it: uid, generation, resourceVersion, timestamps, optional status."""
    out = copy.deepcopy(doc)
    kind = doc["kind"].lower()
    out["metadata"] = {**out["metadata"], "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, doc["metadata"]["name"])),
                       "generation": generation, "resourceVersion": str(1000 + generation),
                       "creationTimestamp": TIMESTAMP,
                       "finalizers": [f"finalizers.servicemesh.oci.oracle.com/{kind}-resources"],
                       "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update",
                                          "apiVersion": API_VERSION, "time": TIMESTAMP, "fieldsType": "FieldsV1",
                                          "fieldsV1": {"f:spec": {}}}]}
    if status:
        out["status"] = status
    return out


def review(kind: str, operation: str, obj: Json | None, old: Json | None = None, *, version: str = "v1",
           uid: str | None = None, dry_run: bool = False) -> Json:
    """An AdmissionReview request as the API server sends it."""
    pod = kind == "Pod"
    group, group_version = ("", "v1") if pod else (API_GROUP, "v1beta1")
    resource = "pods" if pod else KINDS[Kind(kind)].plural
    target = obj if obj is not None else old
    meta = target["metadata"] if target is not None else {}
    options = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions", "DELETE": "DeleteOptions"}[operation]
    request: Json = {
        "uid": uid or str(uuid.uuid4()),
        "kind": {"group": group, "version": group_version, "kind": kind},
        "resource": {"group": group, "version": group_version, "resource": resource},
        "requestKind": {"group": group, "version": group_version, "kind": kind},
        "requestResource": {"group": group, "version": group_version, "resource": resource},
        "namespace": "shop",
        "operation": operation,
        "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": options, "fieldManager": "kubectl-client-side-apply"},
    }
    if meta.get("name"):
        request["name"] = meta["name"]
    return {"kind": "AdmissionReview", "apiVersion": f"admission.k8s.io/{version}", "request": request}


def created(name: str, change: Callable[[Json], None] | None = None, *, rename: str | None = None) -> Json:
    """A CREATE review of canary object ``name`` (renamed, changed)."""
    doc = copy.deepcopy(CANARY[name])
    doc["metadata"]["name"] = rename or f"{name}-new"
    if change is not None:
        change(doc)
    return review(doc["kind"], "CREATE", stored(doc))


def path_of(kind: str) -> str:
    return validate_path(Kind(kind))


def post_review(server: Server, document: Json, path: str | None = None) -> Reply:
    kind = document["request"]["kind"]["kind"]
    return server.post(path or (MUTATE_POD_PATH if kind == "Pod" else path_of(kind)), document)


# ------------------------------------------------------------------------------- validating webhooks


GATEWAY_REF, REVIEWS_REF = {"ref": {"name": "shop-gw"}}, {"ref": {"name": "reviews"}}
INVALID: dict[Kind, tuple[Callable[[Json], None], str]] = {
    Kind.MESH: (lambda d: d["metadata"].update(name="m" * 191), "metadata.name: is 191 characters long"),
    Kind.VIRTUAL_SERVICE: (lambda d: d["spec"].update(mtls={"mode": "DISABLED"}),
                           "spec.mtls.mode: DISABLED is below the mTLS minimum PERMISSIVE"),
    Kind.VIRTUAL_DEPLOYMENT: (lambda d: d["spec"].update(serviceDiscovery={"type": "DISABLED", "hostname": "x.shop"}),
                              "spec.serviceDiscovery.hostname: must be empty when the type is DISABLED"),
    Kind.VIRTUAL_SERVICE_ROUTE_TABLE: (
        lambda d: d["spec"]["routeRules"][0]["httpRoute"]["destinations"][1].update(port=9081),
        "spec.routeRules[0].httpRoute.destinations[1].port: is 9081 but destinations[0] targets 9080"),
    Kind.ACCESS_POLICY: (lambda d: d["spec"]["rules"][0].update(destination={"ingressGateway": GATEWAY_REF}),
                         "spec.rules[0].destination.ingressGateway: cannot be a destination"),
    Kind.INGRESS_GATEWAY: (lambda d: d["spec"]["hosts"][0]["listeners"][0].update(port=80),
                           "spec.hosts[0].listeners[0].port: is 80"),
    Kind.INGRESS_GATEWAY_ROUTE_TABLE: (
        lambda d: d["spec"]["routeRules"][0].update(tcpRoute={"destinations": [{"virtualService": REVIEWS_REF}]}),
        "spec.routeRules[0]: set only one of httpRoute, tcpRoute or tlsPassthroughRoute"),
    Kind.VIRTUAL_DEPLOYMENT_BINDING: (lambda d: d["spec"]["target"]["service"]["ref"].update(name="ratings"),
                                      "spec.target.service.ref: Service shop/ratings does not exist"),
    Kind.INGRESS_GATEWAY_DEPLOYMENT: (lambda d: d["spec"]["deployment"]["autoscaling"].update(minPods=5, maxPods=2),
                                      "spec.deployment.autoscaling.maxPods: is 2, below minPods 5"),
}


@pytest.mark.parametrize("kind", list(Kind), ids=str)
def test_each_validating_path_accepts_a_valid_object_and_echoes_the_uid(server: Server, ctx: FakeContext,
                                                                       kind: Kind) -> None:
    document = created(BY_KIND[kind])
    answer = post_review(server, document).review()
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"] == {"uid": document["request"]["uid"], "allowed": True}


@pytest.mark.parametrize("kind", list(Kind), ids=str)
def test_each_validating_path_refuses_an_invalid_object_with_osok_s_message(server: Server, ctx: FakeContext,
                                                                          kind: Kind) -> None:
    change, expected = INVALID[kind]
    document = created(BY_KIND[kind], change)
    response = post_review(server, document).response()
    name = document["request"]["object"]["metadata"]["name"]
    assert response["uid"] == document["request"]["uid"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert response["status"]["reason"] == "Forbidden"
    prefix = f"Failed to create Resource for Kind: {kind.value}, Name: {name}, Namespace: shop, Error: "
    assert response["status"]["message"].startswith(prefix + expected)


def test_every_error_is_named_and_warnings_are_returned_separately(server: Server, ctx: FakeContext) -> None:
    def two_errors(doc: Json) -> None:
        doc["spec"]["deployment"]["autoscaling"].update(minPods=5, maxPods=2)
        doc["spec"]["secrets"] = [{"secretName": "tls"}, {"secretName": "tls"}]

    message = post_review(server, created("shop-gw-deploy", two_errors)).response()["status"]["message"]
    reasons = message.split(", Error: ", 1)[1].split("\n")
    paths = [r.split(": ", 1)[0] for r in reasons]
    assert paths == ["spec.deployment.autoscaling.maxPods", "spec.secrets[1].secretName"]

    change, _ = INVALID[Kind.VIRTUAL_SERVICE_ROUTE_TABLE]
    response = post_review(server, created("reviews-canary", change)).response()
    assert response["allowed"] is False
    assert response["warnings"] == [
        "spec.routeRules[0].httpRoute.destinations[1].port: VirtualDeployment shop/reviews-v2 has no listener on "
        "port 9081 (it listens on 9080); traffic for this destination will find nothing to reach"]
    assert "has no listener" not in response["status"]["message"]


def test_a_reference_to_an_object_not_created_yet_is_allowed_with_a_warning(server: Server, ctx: FakeContext) -> None:
    document = created("reviews", lambda d: d["spec"].update(mesh={"ref": {"name": "later-mesh"}}))
    response = post_review(server, document).response()
    assert response["allowed"] is True
    assert [w.split(":", 1)[0] for w in response["warnings"]] == ["spec.mesh.ref"]


def test_an_object_that_cannot_be_read_as_its_kind_is_a_decode_error(server: Server, ctx: FakeContext) -> None:
    response = post_review(server, created("reviews", lambda d: d["spec"].update(colour="blue"))).response()
    assert (response["allowed"], response["status"]["code"], response["status"]["reason"]) == (False, 400, "BadRequest")
    assert response["status"]["message"].startswith(
        "Failed to create Resource for Kind: VirtualService, Name: reviews-new, Namespace: shop, Error: spec.colour: ")


def test_an_object_the_parser_chokes_on_is_a_decode_error_not_a_crash(server: Server, ctx: FakeContext) -> None:
    doc = stored(CANARY["reviews"])
    doc["metadata"]["finalizers"] = 5  # the model's parser raises TypeError on this
    response = post_review(server, review("VirtualService", "CREATE", doc)).response()
    assert (response["allowed"], response["status"]["code"]) == (False, 400)


def test_an_update_of_an_immutable_field_is_refused(server: Server, ctx: FakeContext) -> None:
    old = stored(CANARY["reviews"], generation=1)
    new = stored(CANARY["reviews"], generation=2)
    new["spec"]["mesh"] = {"ref": {"name": "other-mesh"}}
    response = post_review(server, review("VirtualService", "UPDATE", new, old)).response()
    assert (response["allowed"], response["status"]["code"]) == (False, 403)
    assert response["status"]["message"].startswith(
        "Failed to create Resource for Kind: VirtualService, Name: reviews, Namespace: shop, Error: spec.mesh: "
        "cannot change after creation")


def test_an_allowed_update_passes(server: Server, ctx: FakeContext) -> None:
    old = stored(CANARY["reviews-canary"], generation=3)
    new = stored(CANARY["reviews-canary"], generation=4)
    for destination, weight in zip(new["spec"]["routeRules"][0]["httpRoute"]["destinations"], (50, 50), strict=True):
        destination["weight"] = weight
    assert post_review(server, review("VirtualServiceRouteTable", "UPDATE", new, old)).response()["allowed"] is True


def test_an_update_that_keeps_the_generation_is_allowed_before_any_rule_runs(server: Server, ctx: FakeContext) -> None:
    old = stored(CANARY["reviews"], generation=2)
    new = stored(CANARY["reviews"], generation=2)
    new["spec"]["mesh"] = {"ref": {"name": "other-mesh"}}  # would be refused if the generation had moved
    new["spec"]["colour"] = "blue"  # would not even parse
    new["metadata"]["finalizers"] = ["finalizers.servicemesh.oci.oracle.com/virtualservice-resources"]
    response = post_review(server, review("VirtualService", "UPDATE", new, old)).response()
    assert response["allowed"] is True


def test_an_update_is_refused_while_the_previous_change_is_in_flight(server: Server, ctx: FakeContext) -> None:
    old = stored(CANARY["reviews"], generation=1, conditions=_conditions("True", "Unknown"))
    new = stored(CANARY["reviews"], generation=2)
    new["spec"]["hosts"] = ["reviews.shop.svc.cluster.local", "reviews"]
    response = post_review(server, review("VirtualService", "UPDATE", new, old)).response()
    assert (response["allowed"], response["status"]["code"]) == (False, 403)
    assert "Error: status.conditions[1]: " in response["status"]["message"]


def _conditions(*statuses: str) -> list[Json]:
    types = ("ServiceMeshDependenciesActive", "ServiceMeshConfigured", "ServiceMeshActive")
    return [{"type": t, "status": s, "lastTransitionTime": TIMESTAMP, "reason": "Successful", "message": "test",
             "observedGeneration": 1} for t, s in zip(types, statuses, strict=False)]


def test_delete_is_allowed_unless_a_change_is_being_applied(server: Server, ctx: FakeContext) -> None:
    settled = stored(CANARY["reviews"], conditions=_conditions("True", "True", "True"))
    assert post_review(server, review("VirtualService", "DELETE", None, settled)).response()["allowed"] is True
    applying = stored(CANARY["reviews"], conditions=_conditions("True", "True", "Unknown"))
    response = post_review(server, review("VirtualService", "DELETE", None, applying)).response()
    assert (response["allowed"], response["status"]["code"]) == (False, 403)
    assert response["status"]["message"].startswith(
        "Failed to create Resource for Kind: VirtualService, Name: reviews, Namespace: shop, Error: "
        "status.conditions[2]: cannot delete while a change is still being applied")


def test_delete_without_the_old_object_consults_the_world_and_lets_unknown_objects_go(server: Server,
                                                                                      ctx: FakeContext) -> None:
    applying, _ = parse_object(stored(CANARY["reviews"], conditions=_conditions("True", "True", "Unknown")))
    assert applying is not None
    ctx.index.put(applying)
    document = review("VirtualService", "DELETE", None, None)
    document["request"].update(name="reviews")
    assert post_review(server, document).response()["allowed"] is False
    document["request"].update(name="never-heard-of-it")
    assert post_review(server, document).response()["allowed"] is True


def test_delete_of_an_object_meshplane_cannot_read_is_allowed(server: Server, ctx: FakeContext) -> None:
    broken = stored(CANARY["reviews"], conditions=_conditions("True", "True", "Unknown"))
    broken["metadata"]["name"] = "broken"
    broken["spec"]["colour"] = "blue"
    assert post_review(server, review("VirtualService", "DELETE", None, broken)).response()["allowed"] is True


def test_a_crashing_validator_fails_closed_but_never_blocks_a_delete(server: Server, ctx: FakeContext,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object) -> list[Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(webhook, "validate", crash)
    response = post_review(server, created("reviews")).response()
    assert (response["allowed"], response["status"]["code"], response["status"]["reason"]) == (False, 500,
                                                                                               "InternalError")
    assert "(RuntimeError)" in response["status"]["message"]
    response = post_review(server, review("VirtualService", "DELETE", None, stored(CANARY["reviews"]))).response()
    assert response["allowed"] is True
    assert "RuntimeError" in response["warnings"][0]


def test_a_v1beta1_review_is_answered_in_v1beta1(server: Server, ctx: FakeContext) -> None:
    document = created("shop-mesh")
    document["apiVersion"] = "admission.k8s.io/v1beta1"
    answer = post_review(server, document).review()
    assert answer["apiVersion"] == "admission.k8s.io/v1beta1"
    assert answer["response"] == {"uid": document["request"]["uid"], "allowed": True}


def test_a_kind_the_path_does_not_admit_is_a_bad_request(server: Server, ctx: FakeContext) -> None:
    document = created("reviews")
    reply = server.post(path_of("Mesh"), document)
    assert reply.status == 400
    assert b"this path admits Mesh" in reply.body
    document["request"]["kind"]["kind"] = "Mesh"  # the envelope says Mesh, the object is a VirtualService
    assert server.post(path_of("Mesh"), document).status == 400


# ----------------------------------------------------------------------------------- the injector


POD: Json = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "generateName": "reviews-v1-7d9f8c6b5-",
        "namespace": "shop",
        "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "7d9f8c6b5"},
        "annotations": {"example.com/api-token": "s3cr3t-t0ken"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v1-7d9f8c6b5",
                             "uid": "0b3c0a8e-7d6b-4b8f-9a51-3f0b2c8d9e10", "controller": True,
                             "blockOwnerDeletion": True}],
    },
    "spec": {
        "containers": [{
            "name": "reviews",
            "image": "registry.example/reviews:1.4",
            "ports": [{"name": "http", "containerPort": 9080, "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"}, "periodSeconds": 5,
                               "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
            "resources": {},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
            "volumeMounts": [{"name": "kube-api-access-7x2kq", "readOnly": True,
                              "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
        }],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                         "tolerationSeconds": 300}],
        "priority": 0,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
        "volumes": [{"name": "kube-api-access-7x2kq", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
    },
    "status": {},
}


def pod_review(change: Callable[[Json], None] | None = None, **options: Any) -> Json:
    pod = copy.deepcopy(POD)
    if change is not None:
        change(pod)
    return review("Pod", "CREATE", pod, **options)


def applied(pod: Json, response: Json) -> Json:
    jsonpatch = pytest.importorskip("jsonpatch")
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    patched: Json = jsonpatch.JsonPatch(ops).apply(copy.deepcopy(pod))
    return patched


def test_an_eligible_pod_gets_a_patch_that_applies_and_adds_the_sidecar(server: Server, ctx: FakeContext) -> None:
    document = pod_review(uid="5f3c2a1b-9d8e-4f7a-b6c5-d4e3f2a1b0c9")
    response = post_review(server, document).response()
    assert (response["uid"], response["allowed"]) == (document["request"]["uid"], True)
    assert "warnings" not in response
    pod = applied(POD, response)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["reviews", "oci-sm-proxy"]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["init"]
    node_id = "reviews-v1-7d9f8c6b5-5f3c2a1b.shop"
    assert ctx.issued == [(node_id, "shop/reviews-v1")]
    sidecar = pod["spec"]["containers"][1]
    assert sidecar["image"] == SETTINGS.image
    assert {"name": "MESHPLANE_NODE_ID", "value": node_id} in sidecar["env"]
    assert {"name": "DEPLOYMENT_ID", "value": BINDING.deployment_id} in sidecar["env"]
    secrets = [v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v]
    assert secrets == ["meshplane-proxy-1"]
    assert pod["metadata"]["annotations"]["servicemesh.oci.oracle.com/virtual-deployment-binding-ref"] == BINDING.key


def test_a_v1beta1_pod_review_is_answered_in_v1beta1(server: Server, ctx: FakeContext) -> None:
    answer = post_review(server, pod_review(version="v1beta1")).review()
    assert answer["apiVersion"] == "admission.k8s.io/v1beta1"
    assert answer["response"]["patchType"] == "JSONPatch"


@pytest.mark.parametrize("change", [
    lambda ctx, pod: pod["metadata"]["labels"].update({INJECTION_LABEL: "disabled"}),
    lambda ctx, pod: pod["metadata"]["labels"].update(version="v3"),
    lambda ctx, pod: ctx.labels.clear(),
    lambda ctx, pod: ctx.binding_list.clear(),
    lambda ctx, pod: ctx.binding_list.__setitem__(0, dataclasses.replace(BINDING, active=False)),
], ids=["pod-opted-out", "no-binding-selects-it", "namespace-unknown", "no-bindings", "binding-inactive"])
def test_a_pod_that_is_not_eligible_is_allowed_unchanged(server: Server, ctx: FakeContext,
                                                         change: Callable[[FakeContext, Json], None]) -> None:
    response = post_review(server, pod_review(lambda pod: change(ctx, pod))).response()
    assert set(response) == {"uid", "allowed"}
    assert response["allowed"] is True
    assert ctx.issued == []


@pytest.mark.parametrize("document", [
    review("Pod", "UPDATE", POD, POD),
    review("Pod", "DELETE", None, POD),
    {**review("Pod", "CREATE", POD), "request": {**review("Pod", "CREATE", POD)["request"], "subResource": "status"}},
    review("VirtualService", "CREATE", stored(CANARY["reviews"])),
], ids=["update", "delete", "subresource", "not-a-pod"])
def test_anything_but_a_pod_create_is_allowed_unchanged(server: Server, ctx: FakeContext, document: Json) -> None:
    response = server.post(MUTATE_POD_PATH, document).response()
    assert response == {"uid": document["request"]["uid"], "allowed": True}


def test_an_injection_error_refuses_the_pod_with_its_message(server: Server, ctx: FakeContext) -> None:
    document = pod_review(lambda pod: pod["metadata"]["annotations"].update(
        {"servicemesh.oci.oracle.com/proxy-log-level": "chatty"}))
    response = post_review(server, document).response()
    assert (response["allowed"], response["status"]["code"], response["status"]["reason"]) == (False, 400, "BadRequest")
    assert "invalid proxy log level 'chatty'" in response["status"]["message"]


def test_failing_to_issue_credentials_admits_the_pod_unmeshed_with_a_warning(
        server: Server, ctx: FakeContext, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(node_id: str, deployment: str) -> str:
        raise RuntimeError(f"cannot write credentials for {node_id}")

    ctx.issue = refuse
    with caplog.at_level(logging.DEBUG, logger="meshplane.injector.webhook"):
        response = post_review(server, pod_review()).response()
    assert response["allowed"] is True
    assert "patch" not in response and "status" not in response
    assert "could not inject the mesh sidecar (RuntimeError)" in response["warnings"][0]
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in errors] == ["injecting Pod shop/reviews-v1-7d9f8c6b5- failed with RuntimeError"]
    assert "s3cr3t" not in caplog.text  # the pod's contents are never logged


def test_credentials_that_take_too_long_admit_the_pod_unmeshed(server: Server, ctx: FakeContext,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(node_id: str, deployment: str) -> str:
        time.sleep(1.0)
        return "late"

    ctx.issue = slow
    monkeypatch.setattr(webhook, "ISSUE_TIMEOUT", 0.1)
    response = post_review(server, pod_review()).response()
    assert response["allowed"] is True
    assert "(TimeoutError)" in response["warnings"][0]


def test_injection_not_configured_admits_the_pod_with_a_warning(server: Server, ctx: FakeContext) -> None:
    ctx.injection = None
    response = post_review(server, pod_review()).response()
    assert response["allowed"] is True
    assert "not configured" in response["warnings"][0]
    assert "patch" not in response
    assert ctx.issued == []


def test_a_dry_run_issues_nothing_but_still_reports_a_refusal(server: Server, ctx: FakeContext) -> None:
    response = post_review(server, pod_review(dry_run=True)).response()
    assert (response["allowed"], "patch" in response) == (True, False)
    assert response["warnings"][0].startswith("dry run")
    assert ctx.issued == []
    refused = pod_review(lambda pod: pod["metadata"]["annotations"].update(
        {"servicemesh.oci.oracle.com/proxy-log-level": "chatty"}), dry_run=True)
    assert post_review(server, refused).response()["allowed"] is False


@pytest.mark.parametrize(("metadata", "expected"), [
    ({"name": "reviews-0"}, "reviews-0-abcdef12.shop"),
    ({"generateName": "reviews-v1-7d9f8c6b5-"}, "reviews-v1-7d9f8c6b5-abcdef12.shop"),
    ({"generateName": "-"}, "pod-abcdef12.shop"),
    ({}, "pod-abcdef12.shop"),
    ({"name": "../../etc/passwd"}, "..-..-etc-passwd-abcdef12.shop"),
], ids=["name", "generate-name", "empty-generate-name", "nothing", "unsafe"])
def test_node_ids_name_the_pod_and_the_request(metadata: Json, expected: str) -> None:
    assert node_id_for({"metadata": metadata}, "abcdef12-3456-7890", "shop") == expected


# ------------------------------------------------------------------------------------- the envelope


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", b"not JSON"),
    (b"[]", b"not an AdmissionReview"),
    (json.dumps({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v2", "request": {"uid": "x"}}).encode(),
     b"apiVersion must be one of"),
    (json.dumps({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}).encode(), b"has no request"),
    (json.dumps({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": ""}}).encode(),
     b"has no uid"),
    (b"\xff\xfe\x00", b"not JSON"),
    (b"[" * 100_000, b"not JSON"),
], ids=["not-json", "array", "api-version", "no-request", "no-uid", "not-utf8", "too-deep"])
@pytest.mark.parametrize("path", [MUTATE_POD_PATH, validate_path(Kind.MESH)], ids=["mutate", "validate"])
def test_a_body_that_is_not_an_admission_review_is_a_bad_request(server: Server, ctx: FakeContext, path: str,
                                                                 body: bytes, reason: bytes) -> None:
    reply = server.request("POST", path, body, {"Content-Type": "application/json"})
    assert reply.status == 400
    assert reason in reply.body


def test_content_type_size_method_and_path_are_checked(server: Server, ctx: FakeContext) -> None:
    path = validate_path(Kind.MESH)
    body = json.dumps(created("shop-mesh")).encode()
    assert server.request("POST", path, body, {"Content-Type": "text/plain"}).status == 415
    assert server.request("POST", path, b" " * (MAX_BODY + 1), {"Content-Type": "application/json"}).status == 413
    assert server.request("GET", path).status == 405
    assert server.request("POST", "/validate-something-else", body, {"Content-Type": "application/json"}).status == 404
    assert server.request("GET", "/healthz") == Reply(200, b"ok\n")


def test_every_review_is_observed_with_its_webhook_and_outcome_for_metrics(server: Server, ctx: FakeContext) -> None:
    server.observed.clear()
    post_review(server, created("shop-mesh"))
    post_review(server, created(BY_KIND[Kind.MESH], INVALID[Kind.MESH][0]))
    server.request("POST", validate_path(Kind.MESH), b"[]", {"Content-Type": "application/json"})
    server.request("POST", "/validate-something-else", b"{}", {"Content-Type": "application/json"})
    server.request("GET", "/healthz")
    webhook = validate_path(Kind.MESH).lstrip("/")
    assert [(name, outcome) for name, outcome, _ in server.observed] == [
        (webhook, "allowed"), (webhook, "denied"), (webhook, "error"), ("other", "error")]
    assert all(0 < seconds < 5 for _, _, seconds in server.observed)


def test_every_registered_webhook_has_a_route() -> None:
    routes = {(r.method, r.resource.canonical) for r in create_app(FakeContext()).router.routes() if r.resource}
    for configuration in webhook_configurations("meshplane", "meshplane-system", None):
        for hook in configuration["webhooks"]:
            assert ("POST", hook["clientConfig"]["service"]["path"]) in routes


# --------------------------------------------------------------------------------------------- TLS


def test_plaintext_http_to_the_https_port_fails(server: Server) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        with pytest.raises((http.client.HTTPException, OSError)):
            connection.request("GET", "/healthz")
            connection.getresponse().read()
    finally:
        connection.close()


def test_a_client_that_does_not_trust_the_ca_cannot_connect(server: Server) -> None:
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=ssl.create_default_context(),
                                             timeout=10)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            connection.request("GET", "/healthz")
    finally:
        connection.close()


def test_the_key_file_is_private(server: Server) -> None:
    assert os.stat(server.workdir).st_mode & 0o777 == 0o700
    assert os.stat(server.workdir / KEY_FILE).st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" not in (server.workdir / CERT_FILE).read_bytes()


# ------------------------------------------------------------------------------------------ fuzzing


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
JSON_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)
PATHS = [MUTATE_POD_PATH, *(validate_path(kind) for kind in Kind)]
VALID = [pod_review(), created("reviews"), created("shop-gw-deploy"),
         review("VirtualService", "UPDATE", stored(CANARY["reviews"], 2), stored(CANARY["reviews"], 1)),
         review("VirtualDeployment", "DELETE", None, stored(CANARY["reviews-v1"]))]


def _locations(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (dict keys and list indices)."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    found = [here]
    for key, child in children:
        found += _locations(child, (*here, key))
    return found


@st.composite
def mutated_reviews(draw: st.DrawFn) -> Json:
    """A valid review with one to three values replaced by random JSON, or removed."""
    document = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        location = draw(st.sampled_from(_locations(document)[1:]))
        *parents, last = location
        owner: Any = document
        for step in parents:
            owner = owner[step]
        if draw(st.booleans()) and isinstance(owner, dict):
            del owner[last]
        else:
            owner[last] = draw(JSON_VALUES)
    return document


@given(path=st.sampled_from(PATHS), body=st.one_of(
    JSON_VALUES, mutated_reviews(),
    st.fixed_dictionaries({"kind": st.just("AdmissionReview"), "apiVersion": st.just("admission.k8s.io/v1"),
                           "request": st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6)})))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_body_makes_the_server_fail(server: Server, path: str, body: Any) -> None:
    server.context.reset()
    reply = server.post(path, body)
    assert reply.status < 500, reply.body
    if reply.status == 200:
        answer = reply.review()
        assert answer["response"]["uid"] == body["request"]["uid"]
        assert answer["apiVersion"] == body["apiVersion"]


@given(body=st.binary(max_size=256))
@settings(max_examples=50, deadline=None)
def test_no_bytes_make_the_server_fail(server: Server, body: bytes) -> None:
    reply = server.request("POST", MUTATE_POD_PATH, body, {"Content-Type": "application/json"})
    assert reply.status < 500
    assert server.request("GET", "/healthz").status == 200
