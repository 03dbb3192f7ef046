"""Transparent capture end to end: pods injected by the real webhook, iptables for real, unmodified apps.

Every "pod" is a Linux network namespace the test creates (tests/e2e/netns.py). The control plane runs
in one of them with its admission webhooks; each pod manifest goes through ``/mutate-pod`` over HTTPS,
and the patched pod is then run as Kubernetes would run it: the init container's command (``meshplane
iptables ...``) inside the pod's namespace, the application unchanged, and the sidecar container's
command and environment (``meshplane proxy``, which starts Envoy as the uid iptables exempts). A plain
HTTP client in one pod calls a made-up cluster IP; the sidecars route it by Host over mutual TLS with
the route table's 90/10 split.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import pytest
import yaml

from meshplane.controlplane import xdsauth
from tests.e2e import netns
from tests.envoybin import envoy_path

pytestmark = pytest.mark.envoy

API = "servicemesh.oci.oracle.com/v1beta1"
HOST = "reviews.shop.svc.cluster.local"
CLUSTER_IP = "10.96.0.10"  # no such address anywhere: only the capture makes the call work
PORT = 9080
PODS = {"client": (11, {"app": "client", "version": "v1"}), "reviews-v1": (21, {"app": "reviews", "version": "v1"}),
        "reviews-v2": (22, {"app": "reviews", "version": "v2"})}


def obj(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name, "namespace": "shop"}, "spec": spec}


def manifests() -> list[dict[str, Any]]:
    """The mesh (STRICT by default), its bindings, and the Kubernetes objects injection reads."""
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": "shop", "labels": {"servicemesh.oci.oracle.com/sidecar-injection": "enabled"}}},
        obj("Mesh", "shop", {}),
        obj("VirtualService", "reviews", {"mesh": {"ref": {"name": "shop"}}, "hosts": [HOST]}),
        obj("VirtualService", "client", {"mesh": {"ref": {"name": "shop"}}}),
        obj("VirtualDeployment", "client-v1", {"virtualService": {"ref": {"name": "client"}}}),
        obj("AccessPolicy", "client-to-reviews", {"mesh": {"ref": {"name": "shop"}}, "rules": [{
            "action": "ALLOW", "source": {"virtualService": {"ref": {"name": "client"}}},
            "destination": {"virtualService": {"ref": {"name": "reviews"}}}}]}),
        obj("VirtualServiceRouteTable", "reviews-canary", {"virtualService": {"ref": {"name": "reviews"}},
            "routeRules": [{"httpRoute": {"path": "/", "pathType": "PREFIX", "destinations": [
                {"virtualDeployment": {"ref": {"name": "reviews-v1"}}, "weight": 90, "port": PORT},
                {"virtualDeployment": {"ref": {"name": "reviews-v2"}}, "weight": 10, "port": PORT}]}}]}),
    ]
    for app in ("client", "reviews"):
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": app, "namespace": "shop"},
                     "spec": {"selector": {"app": app}, "ports": [{"port": PORT}]}})
    for version in ("v1", "v2"):
        docs.append(obj("VirtualDeployment", f"reviews-{version}", {
            "virtualService": {"ref": {"name": "reviews"}}, "listener": [{"protocol": "HTTP", "port": PORT}],
            "serviceDiscovery": {"type": "DNS", "hostname": f"reviews-{version}.shop.svc.cluster.local"}}))
    for name, app, version in (("client-v1", "client", "v1"), ("reviews-v1", "reviews", "v1"),
                               ("reviews-v2", "reviews", "v2")):
        docs.append(obj("VirtualDeploymentBinding", name, {"virtualDeployment": {"ref": {"name": name}},
                         "target": {"service": {"ref": {"name": app}, "matchLabels": {"version": version}}}}))
    return docs


def pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """An ordinary pod: one container, a readiness probe on its port (the injector rewrites it)."""
    container = {"name": "app", "image": "example/app:1", "ports": [{"containerPort": PORT, "name": "http"}],
                 "readinessProbe": {"httpGet": {"path": "/", "port": "http"}}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "spec": {"containers": [container]}}


def review(manifest: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "shop",
        "operation": "CREATE", "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": manifest, "oldObject": None, "dryRun": False}}


POST = """
import json, ssl, sys, urllib.request
context = ssl.create_default_context(cafile=sys.argv[2])
request = urllib.request.Request(sys.argv[1], data=open(sys.argv[3], "rb").read(),
                                 headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(request, context=context, timeout=10).read().decode())
"""

GET = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())
"""

LOAD = """
import http.client, json, sys
host, port, authority, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
names, statuses = [], []
for _ in range(count):
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", "/", headers={"Host": authority})
        reply = connection.getresponse()
        body = reply.read()
        statuses.append(reply.status)
        if reply.status == 200:
            names.append(json.loads(body)["name"])
    except OSError as exc:
        statuses.append(0)
    finally:
        connection.close()
print(json.dumps({"names": names, "statuses": statuses}))
"""


class Cluster:
    """The control plane and the pods, in namespaces of one :class:`netns.Network`."""

    def __init__(self, net: netns.Network, root: Path) -> None:
        self.net, self.root = net, root
        self.cp = net.add_host("cp", 1)
        self.exe = shutil.which("meshplane") or sys.exit("the meshplane command is not installed")
        self.envoy = _envoy_for_proxy_uid(root)

    def python(self, host: str, script: str, *args: str) -> str:
        done = self.net.run(host, [sys.executable, "-c", script, *args], timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    def start_control_plane(self) -> None:
        config = self.root / "config"
        config.mkdir()
        (config / "mesh.yaml").write_text(yaml.safe_dump_all(manifests(), sort_keys=False))
        self.net.start("cp", [self.exe, "serve", "--config-dir", str(config), "--state-dir", str(self.state),
                              "--xds-address", f"{self.cp}:15012", "--admin-address", f"{self.cp}:15014",
                              "--webhook-address", f"{self.cp}:9443", "--sidecar-image", "meshplane:test"],
                       self.root / "control-plane.log")
        self.wait(lambda: "ok" in self.python("cp", GET, f"http://{self.cp}:15014/healthz").lower(), 30,
                  "the control plane")

    @property
    def state(self) -> Path:
        return self.root / "state"

    def inject(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        """The pod as the mutating webhook patches it (over HTTPS, trusting the control plane's CA)."""
        ca = self.root / "ca.pem"
        ca.write_bytes(xdsauth.authority(self.state).trust_bundle_pem())
        body = self.root / f"review-{name}.json"
        manifest = pod(name, labels)
        body.write_text(json.dumps(review(manifest)))
        answer = json.loads(self.python("cp", POST, f"https://{self.cp}:9443/mutate-pod", str(ca), str(body)))
        response = answer["response"]
        assert response["allowed"] and response.get("patchType") == "JSONPatch", response
        patch = json.loads(__import__("base64").b64decode(response["patch"]))
        patched: dict[str, Any] = jsonpatch.apply_patch(manifest, patch)
        return patched

    def run_pod(self, name: str, number: int, patched: dict[str, Any]) -> None:
        """Run the injected pod in its own namespace: init container, application, sidecar."""
        address = self.net.add_host(name, number)
        containers = {c["name"]: c for c in patched["spec"]["containers"]}
        [init] = [c for c in patched["spec"]["initContainers"] if c["name"] == "init"]
        done = self.net.run(name, [self.exe, *init["command"][1:]], _env(init, patched, address))
        assert done.returncode == 0, done.stderr
        if name.startswith("reviews"):
            self.net.start(name, [self.exe, "echo", "--address", "0.0.0.0", "--port", str(PORT), "--name", name],
                           self.root / f"app-{name}.log")
        sidecar = containers["oci-sm-proxy"]
        env = _env(sidecar, patched, address)
        argv = [self.exe, *sidecar["command"][1:], "--envoy", self.envoy, "--health-address", f"{address}:15010"]
        argv[argv.index("--credentials") + 1] = str(self.state / "proxies" / env["MESHPLANE_NODE_ID"])
        self.net.start(name, argv, self.root / f"sidecar-{name}.log", env)

    def synced(self) -> int:
        proxies = json.loads(self.python("cp", GET, f"http://{self.cp}:15014/debug/syncz"))["proxies"]
        return sum(all(t["status"] == "SYNCED" for t in p["types"].values()) for p in proxies)

    def wait(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except AssertionError:
                pass
            time.sleep(0.2)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log")))
        raise AssertionError(f"timed out waiting for {what}\n{logs}")

    def load(self, host: str, count: int, target: str = CLUSTER_IP) -> dict[str, Any]:
        """``count`` requests from ``host`` to ``target``:9080 with the service's Host header."""
        result: dict[str, Any] = json.loads(self.python(host, LOAD, target, str(PORT), HOST, str(count)))
        return result


def _env(container: dict[str, Any], patched: dict[str, Any], address: str) -> dict[str, str]:
    """A container's environment as the kubelet would give it (fieldRefs resolved for this pod)."""
    fields = {"status.podIP": address, "metadata.name": patched["metadata"]["name"],
              "metadata.namespace": patched["metadata"]["namespace"], "metadata.uid": str(uuid.uuid4())}
    env = {}
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        env[item["name"]] = fields[ref] if ref else item["value"]
    return env


def _envoy_for_proxy_uid(root: Path) -> str:
    """Envoy where the proxy's uid can run it (the wheel's copy may sit under a private home directory)."""
    folder = Path(tempfile.mkdtemp(prefix="meshplane-envoy-", dir="/tmp"))
    folder.chmod(0o755)
    target = folder / "envoy"
    try:
        os.link(envoy_path(), target)
    except OSError:
        shutil.copy2(envoy_path(), target)
    (root / "envoy-folder").write_text(str(folder))
    return str(target)


def test_injected_pods_talk_through_both_sidecars_with_mtls_and_the_route_tables_split(tmp_path: Path) -> None:
    why = netns.available()
    if why is not None:
        pytest.skip(why)
    with netns.network() as net:
        cluster = Cluster(net, tmp_path)
        try:
            cluster.start_control_plane()
            for name, (number, labels) in PODS.items():
                cluster.run_pod(name, number, cluster.inject(name, labels))
            cluster.wait(lambda: cluster.synced() == len(PODS), 60, "every sidecar to sync")
            cluster.wait(lambda: set(cluster.load("client", 20)["statuses"]) == {200}, 30, "traffic to flow")
            result = cluster.load("client", 400)
            assert result["statuses"] == [200] * 400
            share = Counter(result["names"])["reviews-v2"] / 400
            assert 0.04 <= share <= 0.16, f"reviews-v2 got {share:.1%} of 400 requests (route table: 10%)"
            stats = cluster.python("client", GET, "http://127.0.0.1:15000/stats?filter=ssl.handshake")
            assert sum(int(line.rsplit(":", 1)[1]) for line in stats.splitlines() if line.strip()) > 0, \
                "the client's sidecar originated mutual TLS"
            outside = cluster.load("cp", 5, net.hosts["reviews-v1"])  # no sidecar: plaintext straight to a pod
            assert outside["statuses"] == [0] * 5, "STRICT: the pod's capture hands it to Envoy, which resets it"
        finally:
            folder = (tmp_path / "envoy-folder")
            if folder.exists():
                shutil.rmtree(folder.read_text(), ignore_errors=True)
