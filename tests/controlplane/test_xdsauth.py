"""Proxies authenticate to the control plane: without the right certificate, no configuration, no secret."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshplane.controlplane import xdsauth
from meshplane.controlplane.reconcile import Timing
from meshplane.controlplane.serve import ControlPlane, Options
from meshplane.injector.ca import CertificateAuthority
from meshplane.xds.bootstrap import XdsTls
from meshplane.xds.resources import TypeUrl
from tests.controlplane.test_configdir import write_canary

DEPLOYMENT = "shop/reviews-v1"


def request(node_id: str, deployment: str = DEPLOYMENT, type_url: str = TypeUrl.CLUSTER.value) -> Any:
    node = base_pb2.Node(id=node_id, cluster=deployment)
    node.metadata.update({"meshplane.deployment": deployment, "meshplane.address": "127.0.0.11",
                          "meshplane.app_ports": {"9080": "19080"}})
    return discovery_pb2.DiscoveryRequest(node=node, type_url=type_url)


async def first_response(port: int, credentials: grpc.ChannelCredentials | None, req: Any) -> Any:
    """The first DiscoveryResponse, or the gRPC error that ended the stream."""
    channel = (grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) if credentials
               else grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
    async with channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        async def requests() -> Any:  # like a proxy: one request, then the stream stays open
            yield req
            await asyncio.sleep(30)

        call = stub.StreamAggregatedResources(requests())
        try:
            return await asyncio.wait_for(call.read(), timeout=10)
        except grpc.aio.AioRpcError as error:
            return error


def credentials_for(files: XdsTls) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=Path(files.trusted_ca).read_bytes(),
                                        private_key=Path(files.private_key).read_bytes(),
                                        certificate_chain=Path(files.certificate_chain).read_bytes())


async def with_control_plane(tmp_path: Path, check: Any) -> Any:
    (tmp_path / "config").mkdir()
    write_canary(tmp_path / "config")
    plane = ControlPlane(Options(tmp_path / "config", tmp_path / "state", "127.0.0.1:0", "127.0.0.1:0",
                                 Timing(0.01, 0.05)))
    await plane.start()
    try:
        return await check(plane)
    finally:
        await plane.stop()


def run(tmp_path: Path, make_credentials: Any, req: Any) -> Any:
    async def check(plane: ControlPlane) -> Any:
        return await first_response(plane.xds_port, make_credentials(tmp_path / "state"), req)

    return asyncio.run(with_control_plane(tmp_path, check))


def issued(state: Path, node: str = "reviews-v1-a") -> XdsTls:
    return xdsauth.issue_proxy(state, node, DEPLOYMENT, "127.0.0.1")


def test_a_proxy_with_its_own_certificate_gets_its_configuration(tmp_path: Path) -> None:
    response = run(tmp_path, lambda state: credentials_for(issued(state)), request("reviews-v1-a"))
    assert isinstance(response, discovery_pb2.DiscoveryResponse) and len(response.resources) > 0


def test_a_proxy_without_a_certificate_gets_nothing(tmp_path: Path) -> None:
    def no_client_certificate(state: Path) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=Path(issued(state).trusted_ca).read_bytes())

    response = run(tmp_path, no_client_certificate, request("reviews-v1-a"))
    assert isinstance(response, grpc.aio.AioRpcError) and response.code() is grpc.StatusCode.UNAVAILABLE


def test_a_plaintext_proxy_gets_nothing(tmp_path: Path) -> None:
    response = run(tmp_path, lambda state: None, request("reviews-v1-a"))
    assert isinstance(response, grpc.aio.AioRpcError) and response.code() is grpc.StatusCode.UNAVAILABLE


def test_a_proxy_with_a_certificate_from_another_ca_gets_nothing(tmp_path: Path) -> None:
    def foreign(state: Path) -> grpc.ChannelCredentials:
        files = issued(state)
        other = CertificateAuthority.create_or_load(tmp_path / "other-ca", xdsauth.TRUST_DOMAIN)
        cert, key = other.issue_xds_client("reviews-v1-a", timedelta(hours=1))
        return grpc.ssl_channel_credentials(root_certificates=Path(files.trusted_ca).read_bytes(),
                                            private_key=key.pem().reveal(), certificate_chain=cert.chain_pem)

    response = run(tmp_path, foreign, request("reviews-v1-a"))
    assert isinstance(response, grpc.aio.AioRpcError) and response.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("type_url", [TypeUrl.CLUSTER.value, TypeUrl.SECRET.value], ids=["config", "secret"])
def test_a_proxy_claiming_another_node_gets_nothing(tmp_path: Path, type_url: str) -> None:
    def other_nodes_certificate(state: Path) -> grpc.ChannelCredentials:
        issued(state, "reviews-v1-b")
        return credentials_for(issued(state, "reviews-v1-a"))

    response = run(tmp_path, other_nodes_certificate, request("reviews-v1-b", type_url=type_url))
    assert isinstance(response, grpc.aio.AioRpcError), "no response at all"
    assert response.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "may only act as the node its xDS certificate names" in (response.details() or "")


def test_a_proxy_claiming_another_deployment_gets_nothing(tmp_path: Path) -> None:
    response = run(tmp_path, lambda state: credentials_for(issued(state)),
                   request("reviews-v1-a", deployment="shop/reviews-v2"))
    assert isinstance(response, grpc.aio.AioRpcError) and response.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "was issued for shop/reviews-v1" in (response.details() or "")


def test_proxy_keys_are_written_with_mode_0600(tmp_path: Path) -> None:
    files = issued(tmp_path / "state")
    assert Path(files.private_key).stat().st_mode & 0o777 == 0o600
    assert (Path(files.private_key).parent.stat().st_mode & 0o777) == 0o700
