"""Admitting proxies: the workload a node's metadata describes, or a refusal that says what to do."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2

from meshplane.controlplane import ir
from meshplane.controlplane.serve import workload_from_node
from meshplane.xds.server import StreamRefusedError


def node(metadata: dict[str, Any]) -> Any:
    message = base_pb2.Node(id="reviews-v1-a", cluster="shop/reviews-v1")
    message.metadata.update(metadata)
    return message


@pytest.mark.parametrize("port", ["19080", 19080, 19080.0, "19080.0"], ids=["string", "int", "double", "double-text"])
def test_application_ports_are_read_in_every_form_metadata_may_carry(port: object) -> None:
    workload = workload_from_node(node({"meshplane.deployment": "shop/reviews-v1", "meshplane.address": "127.0.0.11",
                                        "meshplane.app_ports": {"9080": port}}))
    assert workload == ir.Workload("reviews-v1-a", "shop/reviews-v1", "127.0.0.11", ir.Capture.EXPLICIT,
                                   ((9080, 19080),))


@pytest.mark.parametrize(("metadata", "message"), [
    ({}, "does not name its virtual deployment"),
    ({"meshplane.deployment": "shop/reviews-v1", "meshplane.address": "127.0.0.11",
      "meshplane.app_ports": {"9080": "lots"}}, "malformed metadata"),
    ({"meshplane.deployment": "shop/reviews-v1", "meshplane.address": "127.0.0.11",
      "meshplane.capture": "sideways"}, "malformed metadata"),
], ids=["no-deployment", "bad-port", "bad-capture"])
def test_a_node_whose_metadata_cannot_be_served_is_refused_with_what_to_do(metadata: dict[str, Any],
                                                                          message: str) -> None:
    with pytest.raises(StreamRefusedError, match=message) as refused:
        workload_from_node(node(metadata))
    assert "meshplane bootstrap" in str(refused.value)
