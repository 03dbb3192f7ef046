"""The snapshot cache: content versions, interning, consistency, last good snapshot, and watchers."""

from __future__ import annotations

import gc

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2

from meshplane.xds.cache import InconsistentSnapshotError, Snapshot, SnapshotCache, check_consistent
from meshplane.xds.resources import Resource, TypeUrl, interned_count


def cluster(name: str, timeout_s: int = 1) -> Resource:
    message = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    message.connect_timeout.seconds = timeout_s
    message.eds_cluster_config.eds_config.ads.SetInParent()
    return Resource.of(message, refs=[(TypeUrl.ENDPOINT, name)])


def endpoints(name: str, port: int = 8080) -> Resource:
    message = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    address = message.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    address.address, address.port_value = "127.0.0.1", port
    return Resource.of(message)


def route(name: str, *clusters: str) -> Resource:
    message = route_pb2.RouteConfiguration(name=name)
    host = message.virtual_hosts.add(name="all", domains=["*"])
    for target in clusters:
        host.routes.add().route.cluster = target
    return Resource.of(message, refs=[(TypeUrl.CLUSTER, c) for c in clusters])


def good(port: int = 8080) -> Snapshot:
    return Snapshot([cluster("a"), endpoints("a", port), route("outbound_http", "a")])


# ------------------------------------------------------------------------------------------ versions


def test_the_version_is_a_hash_of_content_so_rebuilding_identical_content_keeps_it() -> None:
    assert good().version(TypeUrl.CLUSTER) == good().version(TypeUrl.CLUSTER)
    assert good().versions() == good().versions()


def test_the_order_resources_are_produced_in_does_not_change_the_version() -> None:
    one = Snapshot([cluster("a"), cluster("b"), endpoints("a"), endpoints("b")])
    other = Snapshot([endpoints("b"), cluster("b"), endpoints("a"), cluster("a")])
    assert one.versions() == other.versions()


def test_changed_content_changes_only_that_types_version() -> None:
    before, after = good(8080), good(9090)
    assert before.version(TypeUrl.ENDPOINT) != after.version(TypeUrl.ENDPOINT)
    assert before.version(TypeUrl.CLUSTER) == after.version(TypeUrl.CLUSTER)
    assert before.version(TypeUrl.ROUTE) == after.version(TypeUrl.ROUTE)


def test_two_different_resources_with_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match="two different clusters named 'a'"):
        Snapshot([cluster("a", 1), cluster("a", 2)])


# ------------------------------------------------------------------------------------------ interning


def test_identical_resources_built_separately_are_one_object_with_one_buffer() -> None:
    first, second = cluster("shared"), cluster("shared")
    assert first is second
    assert first.body is second.body
    assert cluster("shared", 2) is not first


def test_resources_nobody_holds_leave_the_intern_table() -> None:
    gc.collect()
    before = interned_count()
    held = [cluster(f"transient-{i}") for i in range(10)]
    assert interned_count() == before + 10
    del held
    gc.collect()
    assert interned_count() == before


def test_the_digest_covers_the_bytes_and_the_name_comes_from_the_message() -> None:
    resource = endpoints("reviews", 9080)
    assert resource.name == "reviews"
    assert resource.type_url is TypeUrl.ENDPOINT
    assert endpoint_pb2.ClusterLoadAssignment.FromString(resource.body).cluster_name == "reviews"
    assert endpoints("reviews", 9081).digest != resource.digest


def test_messages_ads_does_not_serve_are_refused() -> None:
    with pytest.raises(ValueError, match="not served"):
        Resource.of(cluster_pb2.ClusterCollection())


# ------------------------------------------------------------------------------------------ consistency


def test_a_consistent_snapshot_has_no_problems() -> None:
    assert check_consistent(good()) == []


def test_check_consistent_names_every_dangling_reference() -> None:
    snapshot = Snapshot([cluster("a"), route("outbound_http", "a", "x", "y")])
    assert check_consistent(snapshot) == [
        "cluster a names cluster load assignment a which is not in EDS",
        "route config outbound_http names cluster x which is not in CDS",
        "route config outbound_http names cluster y which is not in CDS",
    ]


# ------------------------------------------------------------------------------------------ the cache


def test_an_inconsistent_snapshot_is_refused_and_the_last_good_one_stays() -> None:
    cache = SnapshotCache()
    last_good = good()
    cache.set("proxy-1", last_good)
    with pytest.raises(InconsistentSnapshotError) as refused:
        cache.set("proxy-1", Snapshot([route("outbound_http", "missing")]))
    assert refused.value.problems == ["route config outbound_http names cluster missing which is not in CDS"]
    assert "proxy-1" in str(refused.value)
    assert cache.get("proxy-1") is last_good


def test_watchers_fire_only_when_a_types_version_changes() -> None:
    cache = SnapshotCache()
    seen: list[frozenset[TypeUrl]] = []
    cancel = cache.watch("proxy-1", seen.append)
    cache.set("proxy-1", good(8080))
    cache.set("proxy-1", good(8080))  # identical content, rebuilt
    cache.set("proxy-1", good(9090))  # only the endpoints changed
    cache.set("proxy-2", good(7070))  # another node
    assert seen == [frozenset(TypeUrl), frozenset({TypeUrl.ENDPOINT})]
    cancel()
    cache.set("proxy-1", good(8080))
    assert len(seen) == 2
    assert cache.watcher_count("proxy-1") == 0


def test_set_reports_the_changed_types_and_clear_forgets_the_node_but_not_its_watchers() -> None:
    cache = SnapshotCache()
    seen: list[frozenset[TypeUrl]] = []
    cache.watch("proxy-1", seen.append)
    assert cache.set("proxy-1", good()) == frozenset(TypeUrl)
    assert cache.set("proxy-1", good()) == frozenset()
    cache.clear("proxy-1")
    assert cache.get("proxy-1") is None
    assert cache.nodes() == []
    cache.set("proxy-1", good())
    assert len(seen) == 2


def test_a_resources_repr_never_shows_its_bytes_so_secret_keys_cannot_reach_a_log() -> None:
    from meshplane.xds.secrets import build_certificate_secret

    resource = Resource.of(build_certificate_secret("workload|x", b"CHAIN", b"-----BEGIN PRIVATE KEY-----"))
    assert "PRIVATE" not in repr(resource) and "PRIVATE" not in str(resource)


# ------------------------------------------------------------------------------------------ layered


def _content(snapshot: Snapshot) -> dict[TypeUrl, dict[str, Resource]]:
    return {t: dict(snapshot.items(t)) for t in TypeUrl if snapshot.items(t)}


def test_a_layered_snapshot_holds_what_a_flat_one_holds() -> None:
    base = Snapshot([cluster("a"), endpoints("a"), cluster("b"), endpoints("b")])
    own = [cluster("inbound"), endpoints("inbound"), route("outbound_http", "a", "b")]
    layered, flat = Snapshot.layered(base, own), Snapshot([*base, *own])
    assert _content(layered) == _content(flat)
    assert len(layered) == len(flat) == 7
    assert layered.byte_size() == flat.byte_size() == sum(len(r.body) for r in flat)
    assert layered.base is base and layered.extra == tuple(own)
    assert layered.version(TypeUrl.ROUTE) == flat.version(TypeUrl.ROUTE), "a type only the proxy has: flat"
    assert layered.version(TypeUrl.CLUSTER) != base.version(TypeUrl.CLUSTER)


def test_layered_versions_follow_content_on_either_side() -> None:
    def proxy(port: int, inbound_timeout: int) -> Snapshot:
        base = Snapshot([cluster("a"), endpoints("a", port)])
        return Snapshot.layered(base, [cluster("inbound", inbound_timeout), endpoints("inbound")])

    assert proxy(8080, 1).versions() == proxy(8080, 1).versions()
    assert proxy(8080, 1).version(TypeUrl.ENDPOINT) != proxy(9090, 1).version(TypeUrl.ENDPOINT)
    assert proxy(8080, 1).version(TypeUrl.CLUSTER) != proxy(8080, 2).version(TypeUrl.CLUSTER)
    assert proxy(8080, 1).version(TypeUrl.CLUSTER) == proxy(9090, 1).version(TypeUrl.CLUSTER)


def test_a_layered_snapshot_refuses_a_name_the_base_has_with_other_content() -> None:
    base = Snapshot([cluster("a", timeout_s=1), endpoints("a")])
    assert len(Snapshot.layered(base, [cluster("a", timeout_s=1)])) == 2, "the same resource twice is one"
    with pytest.raises(ValueError, match="named 'a'"):
        Snapshot.layered(base, [cluster("a", timeout_s=2)])


def test_a_layered_snapshot_is_checked_across_both_sides() -> None:
    base = Snapshot([cluster("a"), route("outbound_http", "a", "inbound")])  # names the proxy's cluster
    assert check_consistent(base) == ["cluster a names cluster load assignment a which is not in EDS",
                                      "route config outbound_http names cluster inbound which is not in CDS"]
    whole = Snapshot.layered(base, [cluster("inbound"), endpoints("inbound"), endpoints("a")])
    assert check_consistent(whole) == []
    missing = Snapshot.layered(base, [cluster("inbound"), endpoints("a")])
    assert check_consistent(missing) == ["cluster inbound names cluster load assignment inbound which is not in EDS"]
    assert check_consistent(missing) == check_consistent(Snapshot([*base, *missing.extra]))
    base_dangles = Snapshot.layered(base, [cluster("inbound"), endpoints("inbound")])
    assert check_consistent(base_dangles) == ["cluster a names cluster load assignment a which is not in EDS"]
