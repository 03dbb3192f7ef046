"""Observability end to end: Envoy's stats on 15006, access logs, the control plane's metrics and sync view.

Real Envoy sidecars and real traffic on loopback. Request counts are checked against what the client saw
(which app answered each request); access log lines against the requests sent, one by one; the sync view
against a proxy that really holds an old version (its Envoy is paused with SIGSTOP, so it cannot ACK).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import dashboards
from tests.e2e.harness import Mesh, load, mesh
from tests.e2e.test_canary import APP_PORT, HOST, PORT, allow, base, obj, table
from tests.envoyproc import Envoy, free_port

pytestmark = pytest.mark.envoy

Sample = tuple[str, dict[str, str], float]


LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> list[Sample]:
    """Every sample of a Prometheus text page, line by line: (name, labels, value).

    Parsed here rather than with prometheus-client's parser, which folds Envoy's ``x_total`` counter into
    the family of its counter ``x`` and yields its samples twice.
    """
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        samples.append((name, dict(LABEL.findall(labels)), float(value)))
    return samples


def relabelled(samples: list[Sample]) -> list[Sample]:
    """``samples`` after the proxies' ``metric_relabel_configs`` of ``dashboards/prometheus.yaml``, applied as
    Prometheus does (source labels joined by ``;``, the regex anchored at both ends, ``$n`` replacements)."""
    config = yaml.safe_load((dashboards.DASHBOARD.parent / "prometheus.yaml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "meshplane-proxies")
    out = []
    for name, labels, value in samples:
        labels = dict(labels)
        for rule in job["metric_relabel_configs"]:
            source = ";".join(labels.get(label, "") for label in rule["source_labels"])
            match = re.fullmatch(rule["regex"], source)
            if match is not None:
                template = re.sub(r"\$(\d+)", r"\\\1", rule["replacement"])  # Prometheus' $1 is Python's \1
                labels[rule["target_label"]] = match.expand(template)
        out.append((name, labels, value))
    return out


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(value for n, found, value in samples if n == name and labels.items() <= found.items())


def status_of(url: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def start_canary(m: Mesh, *, client_admin_port: int = 0) -> str:
    """reviews v1 and v2 behind a 90/10 route table and a client; the client's outbound URL once v2 answers."""
    m.start_control_plane()
    for i, version in enumerate(("v1", "v2")):
        m.start_app(f"reviews-{version}", 11 + i, APP_PORT)
        m.start_sidecar(f"reviews-{version}", f"shop/reviews-{version}", 11 + i, {PORT: APP_PORT})
    m.start_sidecar("client", "shop/client", 10, admin_port=client_admin_port)
    url = f"http://{m.address(10)}:15001"
    m.wait_for(lambda: "reviews-v2" in load(url, HOST, count=100, seconds=5).names, 30, "v2 to get traffic")
    return url


def test_envoy_stats_count_each_deployments_requests_and_the_control_plane_reports_its_work(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", [*base(), table({"v1": 90, "v2": 10})])
        url = start_canary(m, client_admin_port=free_port())
        stats = f"http://{m.address(10)}:15006/stats/prometheus"
        before = relabelled(scrape(stats))
        results = load(url, HOST, count=1000, concurrency=16, seconds=60)
        after = relabelled(scrape(stats))
        assert results.failed == 0 and len(results.names) == 1000, (results.statuses, results.errors[:3])
        for version in ("v1", "v2"):
            sent = results.names.count(f"reviews-{version}")
            where = {"destination_service": "shop/reviews", "destination_deployment": f"shop/reviews-{version}",
                     "proxy_deployment": "shop/client"}
            counted = total(after, "envoy_cluster_upstream_rq_total", **where) - total(
                before, "envoy_cluster_upstream_rq_total", **where)
            succeeded = total(after, "envoy_cluster_upstream_rq_xx", envoy_response_code_class="2", **where) - total(
                before, "envoy_cluster_upstream_rq_xx", envoy_response_code_class="2", **where)
            assert sent > 0 and abs(counted - sent) <= 0.01 * sent, (version, sent, counted)
            assert abs(succeeded - sent) <= 0.01 * sent, (version, sent, succeeded)
        check_dashboard_metrics_exist(after)
        # the stats port serves the stats and nothing else of Envoy's admin API
        base_url = f"http://{m.address(10)}:15006"
        assert status_of(base_url + "/stats") == 404
        assert status_of(base_url + "/quitquitquit", "POST") == 404
        assert m.envoys["client"].process.poll() is None
        check_control_plane_metrics(m)


def check_dashboard_metrics_exist(samples: list[Sample]) -> None:
    """Every Envoy metric the dashboard queries is in a real scrape, with the labels it uses."""
    seen: dict[str, set[str]] = {}
    for name, labels, _ in samples:
        seen.setdefault(name, set()).update(labels)
    for name, relied_on in dashboards.ENVOY_METRICS.items():  # what the dashboard may rely on, on a sidecar
        missing = relied_on - dashboards.GATEWAY_LABELS - {"le"} - seen.get(name, set())
        assert not missing, (name, missing)
    dashboard = dashboards.load(dashboards.DASHBOARD)
    for expr in dashboards.queries(dashboard):
        for metric, used in dashboards.label_names(expr).items():
            if metric.startswith("envoy_"):
                assert metric in seen, f"{metric} (dashboard query {expr!r}) is not in Envoy's stats"
                assert used - {"le"} <= seen[metric], (metric, used - seen[metric])


def check_control_plane_metrics(m: Mesh) -> None:
    samples = scrape(f"http://127.0.0.1:{m.admin_port}/metrics")
    for kind in ("CDS", "EDS", "LDS", "RDS"):
        assert total(samples, "meshplane_xds_pushes_total", type=kind) > 0
        assert total(samples, "meshplane_xds_push_seconds_count", type=kind) > 0
    assert total(samples, "meshplane_proxies_connected", kind="sidecar") == 3
    assert total(samples, "meshplane_convergence_seconds_count") >= 3
    assert total(samples, "meshplane_build_seconds_count") > 0
    assert total(samples, "meshplane_translate_seconds_count") > 0
    assert total(samples, "meshplane_proxy_config_bytes_count") >= 3
    assert total(samples, "meshplane_proxy_config_bytes_sum") > 1000


# ------------------------------------------------------------------------------------ access logs


def logging_mesh(client_logs: bool) -> list[dict[str, Any]]:
    """reviews (STRICT, the default floor; it logs) called by client (it logs when ``client_logs``)."""
    logging = {"accessLogging": {"isEnabled": True}}
    return [obj("Mesh", "shop", {}),
            allow("client-to-reviews", "client", "reviews"),
            obj("VirtualService", "reviews", {"mesh": {"ref": {"name": "shop"}}, "hosts": [HOST]}),
            obj("VirtualDeployment", "reviews-v1", {
                "virtualService": {"ref": {"name": "reviews"}}, "listener": [{"protocol": "HTTP", "port": PORT}],
                "serviceDiscovery": {"type": "DNS", "hostname": "reviews-v1.shop.mesh"}, **logging}),
            obj("VirtualService", "client", {"mesh": {"ref": {"name": "shop"}}}),
            obj("VirtualDeployment", "client", {"virtualService": {"ref": {"name": "client"}},
                                                "accessLogging": {"isEnabled": client_logs}})]


def get(m: Mesh, path: str, host: str = HOST) -> int:
    connection = http.client.HTTPConnection(m.address(10), 15001, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host})
        reply = connection.getresponse()
        reply.read()
        return reply.status
    finally:
        connection.close()


def log_lines(envoy: Envoy) -> list[dict[str, Any]]:
    """The JSON access log lines Envoy wrote to stdout."""
    return [json.loads(line) for line in envoy.stdout_lines() if line.startswith("{")]


def with_path(envoy: Envoy, path: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(envoy) if line.get("path") == path]


def logs_enabled(envoy: Envoy) -> bool:
    return "envoy.access_loggers.stdout" in envoy.admin_get("/config_dump?resource=dynamic_listeners")[1]


def test_access_logs_record_each_request_once_with_identities_and_code_and_nothing_when_disabled(
        tmp_path: Path) -> None:
    """A change applies to new connections: the client's application opens one per request here (the
    sidecars' pooled connections between them keep the settings they started with until they close)."""
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", logging_mesh(True))
        m.start_control_plane()
        m.start_app("reviews-v1", 11, APP_PORT)
        reviews = m.start_sidecar("reviews-v1", "shop/reviews-v1", 11, {PORT: APP_PORT})
        client = m.start_sidecar("client", "shop/client", 10)
        m.wait_for(lambda: get(m, "/warm-up") == 200, 30, "the client to reach reviews")
        paths = [f"/logged-{i}" for i in range(10)]
        assert [get(m, path) for path in paths] == [200] * 10
        assert get(m, "/refused", host="unknown.shop.mesh") == 403
        m.wait_for(lambda: all(with_path(client, p) and with_path(reviews, p) for p in paths)
                   and with_path(client, "/refused"), 10, "the access log lines")
        time.sleep(0.5)  # a duplicate would have been flushed by now (every 200 ms)
        for path in paths:
            [out], [into] = with_path(client, path), with_path(reviews, path)
            assert (out["direction"], out["response_code"], out["authority"]) == ("outbound", 200, HOST)
            assert out["source_identity"].endswith("/ns/shop/virtualservice/client")
            assert out["destination_identity"].endswith("/ns/shop/virtualservice/reviews")
            assert (into["direction"], into["response_code"], into["method"]) == ("inbound", 200, "GET")
            assert into["source_identity"] == out["source_identity"]
            assert into["destination_identity"] == out["destination_identity"]
            assert into["proxy"] == "shop/reviews-v1" and out["proxy"] == "shop/client"
        [refused] = with_path(client, "/refused")
        assert refused["response_code"] == 403 and with_path(reviews, "/refused") == []

        # disabled on the client: it logs nothing more, while reviews shows the requests did arrive
        m.write("mesh.yaml", logging_mesh(False))
        m.wait_for(lambda: not logs_enabled(client), 20, "the client's access logs to be off")
        logged = len(log_lines(client))
        quiet = [f"/quiet-{i}" for i in range(10)]
        assert [get(m, path) for path in quiet] == [200] * 10
        m.wait_for(lambda: all(with_path(reviews, path) for path in quiet), 10, "reviews to log the requests")
        time.sleep(0.5)
        assert len(log_lines(client)) == logged


# ----------------------------------------------------------------------------------------- syncz


def client_state(m: Mesh) -> dict[str, Any]:
    proxy = next(p for p in m.syncz()["proxies"] if p["node"] == "client")
    return dict(proxy)


def test_syncz_shows_a_proxy_stale_while_it_holds_an_old_version_and_synced_after(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", [*base(), table({"v1": 90, "v2": 10})])
        start_canary(m)
        m.wait_for(lambda: {t["status"] for t in client_state(m)["types"].values()} == {"SYNCED"}, 20,
                   "the client to be SYNCED")
        assert client_state(m)["identity"].endswith("/ns/shop/virtualservice/client")
        envoy = m.envoys["client"].process
        old = client_state(m)["types"]["RDS"]["acked"]
        os.kill(envoy.pid, signal.SIGSTOP)  # the proxy can no longer ACK anything
        try:
            m.write("mesh.yaml", [*base(), table({"v1": 50, "v2": 50})])
            m.wait_for(lambda: client_state(m)["types"]["RDS"]["status"] == "STALE", 20, "RDS to be STALE")
            rds = client_state(m)["types"]["RDS"]
            assert rds["acked"] == old and rds["sent"] != old
        finally:
            os.kill(envoy.pid, signal.SIGCONT)
        m.wait_for(lambda: client_state(m)["types"]["RDS"]["status"] == "SYNCED", 20, "RDS to be SYNCED again")
        assert client_state(m)["types"]["RDS"]["acked"] != old
