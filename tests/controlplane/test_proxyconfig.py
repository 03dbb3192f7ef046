"""``meshplane proxy-config``: one proxy's configuration, read from a running control plane.

The control plane is the real one (:class:`ControlPlane` on the canary set, with the admin server,
the xDS server and the mesh CA), serving a sidecar of ``reviews-v1`` and a proxy of the ingress
gateway ``shop-gw``, whose routes split ``reviews`` 90/10 between its two deployments. The command
runs in process through :func:`main`, over real HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from meshplane.controlplane import ir, proxyconfig
from meshplane.controlplane.cli import main
from meshplane.controlplane.credentials import Held
from meshplane.controlplane.serve import ControlPlane, Options
from tests.controlplane.test_configdir import write_canary

MESH, TRUST_DOMAIN = "shop/shop-mesh", "shop-mesh.shop.mesh.local"
REVIEWS_ID = f"spiffe://{TRUST_DOMAIN}/ns/shop/virtualservice/reviews"
GATEWAY_ID = f"spiffe://{TRUST_DOMAIN}/ns/shop/ingressgateway/shop-gw"
SIDECAR, GATEWAY = "reviews-v1-a", "shop-gw-a"
WORKLOADS = (ir.Workload(SIDECAR, "shop/reviews-v1", "127.0.0.11", app_ports=((9080, 19080),)),
             ir.Workload("reviews-v2-a", "shop/reviews-v2", "127.0.0.12", app_ports=((9080, 19080),)),
             ir.Workload(GATEWAY, "", "127.0.0.13", gateway="shop/shop-gw"))
GOLDEN = Path(__file__).resolve().parent.parent / "golden"


@dataclass(frozen=True)
class Served:
    """The running control plane's admin address and the credentials it issued (to compare with)."""

    address: str
    sidecar: Held
    gateway: Held
    roots: tuple[x509.Certificate, ...]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The control plane on its own event loop (in a thread), its proxies connected and rendered."""
    config = tmp_path_factory.mktemp("config")
    write_canary(config)
    plane = ControlPlane(Options(config, tmp_path_factory.mktemp("state"), "127.0.0.1:0", "127.0.0.1:0"))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(plane.start())
    for workload in WORKLOADS:
        plane.controller.connect(workload)
        plane.controller.configured(workload.node_id)  # as its proxy's ACKs would
    loop.run_until_complete(plane.controller.reconcile())
    credentials = plane.credentials
    found = Served(f"127.0.0.1:{plane.admin_port}",
                   credentials.for_proxy(SIDECAR, MESH, TRUST_DOMAIN, REVIEWS_ID),  # the ones already issued
                   credentials.for_proxy(GATEWAY, MESH, TRUST_DOMAIN, GATEWAY_ID),
                   credentials.authority(MESH, TRUST_DOMAIN).root_certificates)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.run_until_complete(plane.stop())
        loop.close()


def proxy_config(served: Served, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["proxy-config", *argv, "--admin-address", served.address], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def cells(text: str) -> list[list[str]]:
    """A table's rows, cells split on the two-space column gap (cells never hold two spaces)."""
    return [[cell.strip() for cell in line.split("  ") if cell.strip()] for line in text.splitlines()]


def table(served: Served, proxy: str, kind: str) -> list[list[str]]:
    code, out, err = proxy_config(served, proxy, kind)
    assert code == 0, err
    return cells(out)


def row(rows: list[list[str]], *first: str) -> list[str]:
    [found] = [r for r in rows if r[:len(first)] == list(first)]
    return found


# ------------------------------------------------------------------------------------------ tables


def test_listeners_show_each_chain_its_security_and_where_it_goes(served: Served) -> None:
    rows = table(served, SIDECAR, "listeners")
    assert rows[0] == ["NAME", "ADDRESS", "CHAIN", "MATCH", "SECURITY", "DESTINATION"]
    assert row(rows, "inbound|9080") == ["inbound|9080", "127.0.0.11:9080", "1/1", "any", "mTLS",
                                         "inline route inbound|9080"]
    assert row(rows, "outbound|http")[2:] == ["1/1", "any", "plaintext", "route outbound|http"]
    assert row(rows, "outbound|tls|443")[2:] == ["1/1", "SNI api.ratings.example.com", "TLS passthrough",
                                                 "TCP egress|tls"]
    assert row(table(served, GATEWAY, "listeners"), "gateway|8080")[1:] == [
        "127.0.0.13:8080", "1/1", "any", "plaintext", "route gateway|8080|*plaintext"]


def test_routes_show_the_canary_split_with_its_weights_and_direct_responses(served: Served) -> None:
    rows = table(served, GATEWAY, "routes")
    assert rows[0] == ["ROUTE CONFIG", "VIRTUAL HOST", "DOMAINS", "MATCH", "ACTION"]
    split = "outbound|9080|shop/reviews-v1 90%, outbound|9080|shop/reviews-v2 10%"
    head = ["gateway|8080|*plaintext", "shop/shop-gw|public", "shop.example.com,shop.example.com:8080"]
    assert rows[1:] == [[*head, "path /reviews", split], [*head, "prefix /reviews/", split],
                        [*head, "prefix /reviews", "direct response 404"]]
    sidecar = table(served, SIDECAR, "routes")
    assert row(sidecar, "outbound|http", "outbound|other")[3:] == ["prefix /", "direct response 403"]
    assert row(sidecar, "inbound|9080 (inline)")[3:] == ["prefix /", "inbound|9080"]


def test_clusters_show_type_tls_with_the_required_san_and_protocol(served: Served) -> None:
    rows = table(served, GATEWAY, "clusters")
    assert rows[0] == ["NAME", "TYPE", "TLS", "SAN", "PROTOCOL"]
    for version in ("v1", "v2"):
        assert row(rows, f"outbound|9080|shop/reviews-{version}")[1:] == ["EDS", "mTLS", REVIEWS_ID, "HTTP/1.1"]
    sidecar = table(served, SIDECAR, "clusters")
    assert row(sidecar, "inbound|9080")[1:] == ["STATIC", "plaintext", "-", "HTTP/1.1"]
    assert row(sidecar, "egress|tls")[1:3] == ["dynamic_forward_proxy", "plaintext"]


def test_endpoints_show_each_address_by_cluster(served: Served) -> None:
    rows = table(served, GATEWAY, "endpoints")
    assert rows == [["CLUSTER", "ENDPOINT", "HEALTH", "FROM"],
                    ["outbound|9080|shop/reviews-v1", "127.0.0.11:9080", "-", "EDS"],
                    ["outbound|9080|shop/reviews-v2", "127.0.0.12:9080", "-", "EDS"]]
    assert table(served, SIDECAR, "endpoints")[1:] == [["inbound|9080", "127.0.0.11:19080", "-", "CDS"]]


def stamp(moment: Any) -> str:
    return str(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))


def test_secrets_show_the_issued_certificate_and_the_roots_never_the_key(served: Served) -> None:
    rows = table(served, SIDECAR, "secrets")
    assert rows[0] == ["NAME", "KIND", "SUBJECT", "URI SANS", "SERIAL", "NOT BEFORE", "NOT AFTER"]
    issued = served.sidecar.issued
    assert row(rows, "workload", "certificate")[2:] == [
        "CN=reviews", REVIEWS_ID, f"{issued.serial:x}", stamp(issued.not_before), stamp(issued.not_after)]
    assert row(rows, "workload", "intermediate")[2].startswith("CN=shop-mesh.shop.mesh.local")
    [root] = served.roots
    assert row(rows, f"trust|{TRUST_DOMAIN}", "trusted CA")[2:] == [
        root.subject.rfc4514_string(), "-", f"{root.serial_number:x}", stamp(root.not_valid_before_utc),
        stamp(root.not_valid_after_utc)]
    gateway = served.gateway.issued
    assert row(table(served, GATEWAY, "secrets"), "workload", "certificate")[3:5] == [
        GATEWAY_ID, f"{gateway.serial:x}"]


# ------------------------------------------------------------------------------------------ json, keys


@pytest.mark.parametrize(("kind", "short"), list(proxyconfig.KINDS.items()))
def test_json_is_the_whole_type_as_served(served: Served, kind: str, short: str) -> None:
    code, out, _ = proxy_config(served, GATEWAY, kind, "-o", "json")
    dump = proxyconfig.fetch_dump(served.address, GATEWAY)
    assert code == 0
    assert json.loads(out) == proxyconfig.scrub(dump[short])
    assert json.loads(out)["version"] == dump[short]["version"] and json.loads(out)["resources"]


def test_json_secrets_keep_the_certificates_and_drop_the_key_field(served: Served) -> None:
    _, out, _ = proxy_config(served, SIDECAR, "secrets", "-o", "json")
    secrets = {s["name"]: s for s in json.loads(out)["resources"]}
    certificate = secrets["workload"]["tls_certificate"]
    assert set(certificate) == {"certificate_chain"}, "the private_key field is dropped, not just redacted"
    assert base64.b64decode(certificate["certificate_chain"]["inline_bytes"]) == served.sidecar.issued.chain_pem


@pytest.mark.parametrize("output", ["table", "json"])
@pytest.mark.parametrize("kind", list(proxyconfig.KINDS))
@pytest.mark.parametrize("proxy", [SIDECAR, GATEWAY])
def test_no_output_holds_a_private_key(served: Served, proxy: str, kind: str, output: str) -> None:
    code, out, err = proxy_config(served, proxy, kind, "-o", output)
    assert code == 0
    assert "PRIVATE KEY" not in out + err and "private_key" not in out + err


def with_keys(dump: Any, key_pem: bytes) -> Any:
    """The dump as a careless control plane might serve it: the key inline, as bytes and as text, and a
    PEM key pasted into an unrelated field."""
    leaky = copy.deepcopy(dump)
    encoded = base64.b64encode(key_pem).decode()
    for secret in leaky["SDS"]["resources"]:
        if "tls_certificate" in secret:
            secret["tls_certificate"]["private_key"] = {"inline_bytes": encoded}
            secret["tls_certificate"]["password"] = {"inline_string": "hunter2"}
        secret["extra"] = [{"inline_bytes": encoded}, {"inline_string": key_pem.decode()}, key_pem.decode()]
    leaky["CDS"]["resources"][0]["metadata"] = {"note": "key: " + key_pem.decode()}
    return leaky


def test_a_key_left_in_the_dump_is_never_rendered(served: Served) -> None:
    key_pem = served.sidecar.key.pem().reveal()
    leaky = with_keys(proxyconfig.fetch_dump(served.address, SIDECAR), key_pem)
    secret_text = base64.b64encode(key_pem).decode()
    body = key_pem.decode().splitlines()[1]
    for kind in proxyconfig.KINDS:
        for text in (proxyconfig.render_json(leaky, kind), proxyconfig.render_table(leaky, kind)):
            assert "PRIVATE KEY" not in text and "private_key" not in text and "hunter2" not in text
            assert secret_text not in text and body not in text
    assert f"{served.sidecar.issued.serial:x}" in proxyconfig.render_table(leaky, "secrets")


# ------------------------------------------------------------------------------------------ errors


def test_an_unknown_proxy_is_named_and_points_to_proxy_status(served: Served) -> None:
    code, out, err = proxy_config(served, "nobody-1", "clusters")
    assert (code, out) == (1, "")
    assert "no configuration for proxy 'nobody-1'" in err and "meshplane proxy-status" in err
    assert served.address in err


def test_an_unreachable_control_plane_is_exit_2_naming_the_address() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(["proxy-config", SIDECAR, "listeners", "--admin-address", "127.0.0.1:1"], out=out, err=err)
    assert (code, out.getvalue()) == (2, "")
    assert "127.0.0.1:1" in err.getvalue() and "is `meshplane serve` running" in err.getvalue()


def test_an_unknown_kind_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["proxy-config", SIDECAR, "filters"], out=io.StringIO(), err=io.StringIO())
    assert exited.value.code == 2


# ------------------------------------------------------------------------------------------ other shapes


def golden_dump(case: str, proxy: str) -> dict[str, Any]:
    """A dump built from a golden case's translated resources (the same JSON, without ``@type``)."""
    data = yaml.safe_load((GOLDEN / case / "envoy" / f"{proxy}.yaml").read_text())
    types = {"CDS": "clusters", "EDS": "endpoints", "LDS": "listeners", "RDS": "routes"}
    return {short: {"version": "1", "resources": data.get(group, [])} for short, group in types.items()}


def test_transparent_capture_chains_are_told_apart_by_port_and_tls() -> None:
    rows = cells(proxyconfig.render_table(golden_dump("transparent-capture", "reviews-v1-0"), "listeners"))
    inbound = [r[2:] for r in rows if r[0] == "inbound|capture"]
    assert ["1/4", "port 6379; TLS", "mTLS", "TCP inbound|6379"] in inbound
    assert ["4/4", "port 9080; plaintext", "plaintext", "inline route inbound|9080"] in inbound


def test_a_grpc_route_shows_its_header_condition_and_http2_clusters() -> None:
    dump = golden_dump("grpc-and-prefix", "api-rest-0")
    routes = cells(proxyconfig.render_table(dump, "routes"))
    assert ["prefix /; header content-type application/grpc*", "outbound|9000|shop/api-grpc"] in \
        [r[3:] for r in routes]
    assert [r[0] for r in routes].count("inbound|9000 (inline)") == 1, "mTLS and plaintext chains share one config"
    assert {r[-1] for r in cells(proxyconfig.render_table(dump, "clusters"))[1:]} == {"HTTP/2"}


RARE = {
    "LDS": {"version": "1", "resources": [{
        "name": "tcp", "address": {"socket_address": {"address": "::1", "port_value": 5432}},
        "filter_chains": [{"filter_chain_match": {"prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]},
                           "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                               "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                               "weighted_clusters": {"clusters": [{"name": "a", "weight": 1},
                                                                  {"name": "b", "weight": 2}]}}}]}],
        "default_filter_chain": {"filters": [{"name": "envoy.filters.network.echo"}]}}]},
    "CDS": {"version": "1", "resources": [{"name": "passthrough", "type": "ORIGINAL_DST"},
                                          {"name": "plain"}]},
    "EDS": {"version": "1", "resources": [
        {"cluster_name": "a", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}}},
             "health_status": "UNHEALTHY"}]}]},
        {"cluster_name": "empty"}]},
    "SDS": {"version": "1", "resources": [
        {"name": "on-disk", "tls_certificate": {"certificate_chain": {"filename": "certs/chain.pem"}}},
        {"name": "tickets", "session_ticket_keys": {"keys": [{"inline_bytes": "AAAA"}]}}]},
}


def test_less_common_shapes_are_summarised_too() -> None:
    assert cells(proxyconfig.render_table(RARE, "listeners"))[1:] == [
        ["tcp", "[::1]:5432", "1/1", "to 10.0.0.0/8", "plaintext", "TCP a 33.3%, b 66.7%"],
        ["tcp", "[::1]:5432", "default", "any", "plaintext", "echo"]]
    assert cells(proxyconfig.render_table(RARE, "clusters"))[1:] == [
        ["passthrough", "ORIGINAL_DST", "plaintext", "-", "-"], ["plain", "STATIC", "plaintext", "-", "-"]]
    assert cells(proxyconfig.render_table(RARE, "endpoints"))[1:] == [
        ["a", "10.0.0.1:80", "UNHEALTHY", "EDS"], ["empty", "(none)", "-", "EDS"]]
    assert cells(proxyconfig.render_table(RARE, "secrets"))[1:] == [
        ["on-disk", "certificate", "file certs/chain.pem", "-", "-", "-", "-"],
        ["tickets", "other (not shown)", "-", "-", "-", "-", "-"]]
    assert "session_ticket_keys" not in proxyconfig.render_json(RARE, "secrets")


def test_a_kind_the_proxy_has_none_of_renders_nothing() -> None:
    assert proxyconfig.render_table({"RDS": {"version": "1", "resources": []}}, "routes") == ""
    assert json.loads(proxyconfig.render_json({}, "routes")) == {"version": None, "resources": []}
