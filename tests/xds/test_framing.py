"""Hand-framed discovery responses are exactly what the protobuf library would serialise."""

from __future__ import annotations

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from meshplane.xds import framing
from meshplane.xds.resources import Resource, TypeUrl

CLUSTER = TypeUrl.CLUSTER.value


def resource(name: str, size: int) -> Resource:
    return Resource.from_body(CLUSTER, name, bytes(i % 251 for i in range(size)))


def test_the_field_numbers_are_the_generated_descriptors() -> None:
    fields = {m.DESCRIPTOR.name: {f.name: f.number for f in m.DESCRIPTOR.fields}
              for m in (discovery_pb2.DiscoveryResponse, discovery_pb2.DeltaDiscoveryResponse, discovery_pb2.Resource)}
    assert (fields["DiscoveryResponse"]["version_info"], fields["DiscoveryResponse"]["resources"],
            fields["DiscoveryResponse"]["type_url"], fields["DiscoveryResponse"]["nonce"]) == (
        framing._VERSION_INFO, framing._RESOURCES, framing._TYPE_URL, framing._NONCE)
    assert (fields["DeltaDiscoveryResponse"]["system_version_info"], fields["DeltaDiscoveryResponse"]["resources"],
            fields["DeltaDiscoveryResponse"]["type_url"], fields["DeltaDiscoveryResponse"]["nonce"],
            fields["DeltaDiscoveryResponse"]["removed_resources"]) == (
        framing._SYSTEM_VERSION_INFO, framing._RESOURCES, framing._TYPE_URL, framing._NONCE,
        framing._REMOVED_RESOURCES)
    assert (fields["Resource"]["version"], fields["Resource"]["resource"], fields["Resource"]["name"]) == (
        framing._RESOURCE_VERSION, framing._RESOURCE_BODY, framing._RESOURCE_NAME)


# sizes around the one-, two- and three-byte length prefixes; names with non-ASCII text
CASES = [{}, {"a": resource("a", 0)}, {"é|x": resource("é|x", 127), "b": resource("b", 128)},
         {f"c{i}": resource(f"c{i}", size) for i, size in enumerate((16_383, 16_384, 70_000))}]


@pytest.mark.parametrize("resources", CASES)
@pytest.mark.parametrize(("version", "nonce"), [("", ""), ("v1", "7")])
def test_a_sotw_response_is_the_libraries_serialisation(resources: dict[str, Resource], version: str,
                                                         nonce: str) -> None:
    expected = discovery_pb2.DiscoveryResponse(version_info=version, type_url=CLUSTER, nonce=nonce)
    for name in sorted(resources):
        expected.resources.add(type_url=CLUSTER, value=resources[name].body)
    framed = framing.sotw_response(CLUSTER, version, nonce, resources)
    assert framed == expected.SerializeToString(deterministic=True)
    assert discovery_pb2.DiscoveryResponse.FromString(framed) == expected


@pytest.mark.parametrize("resources", CASES)
@pytest.mark.parametrize("removed", [[], ["gone", "", "ñ"]])
def test_a_delta_response_is_the_libraries_serialisation(resources: dict[str, Resource], removed: list[str]) -> None:
    expected = discovery_pb2.DeltaDiscoveryResponse(system_version_info="v2", type_url=CLUSTER, nonce="9",
                                                    removed_resources=removed)
    for name in sorted(resources):
        item = expected.resources.add(name=name, version=resources[name].digest)
        item.resource.type_url = CLUSTER
        item.resource.value = resources[name].body
    framed = framing.delta_response(CLUSTER, "v2", "9", resources, removed)
    assert framed == expected.SerializeToString(deterministic=True)
    assert discovery_pb2.DeltaDiscoveryResponse.FromString(framed) == expected
