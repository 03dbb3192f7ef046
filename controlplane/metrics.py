"""The control plane's own metrics, in Prometheus' exposition format (``GET /metrics`` on the admin address).

One registry per control plane (not prometheus-client's global one), so tests and several planes in
one process never mix their numbers. Names and labels are a contract for dashboards:

| metric | kind | labels | meaning |
|---|---|---|---|
| ``meshplane_proxies_connected`` | gauge | ``kind`` (sidecar, gateway) | proxies with an open ADS stream |
| ``meshplane_xds_pushes_total`` | counter | ``type`` (CDS, EDS, LDS, RDS, SDS) | responses sent |
| ``meshplane_xds_acks_total`` / ``meshplane_xds_nacks_total`` | counter | ``type`` | what proxies answered |
| ``meshplane_reconcile_round_seconds`` | histogram | | one round: sync, build, status, render, publish |
| ``meshplane_convergence_seconds`` | histogram | | round start → the changed proxy ACKed every type |
| ``meshplane_workload_certificates_issued_total`` | counter | | workload certificates signed |
| ``meshplane_certificate_earliest_expiry_seconds`` | gauge | | seconds to the first held certificate's expiry |
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The metrics of one control plane; the composition root updates them from its hooks."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.proxies = Gauge("meshplane_proxies_connected", "Proxies with an open ADS stream", ["kind"],
                             registry=registry)
        self.pushes = Counter("meshplane_xds_pushes", "xDS responses sent", ["type"], registry=registry)
        self.acks = Counter("meshplane_xds_acks", "xDS responses acknowledged", ["type"], registry=registry)
        self.nacks = Counter("meshplane_xds_nacks", "xDS responses rejected", ["type"], registry=registry)
        self.round_seconds = Histogram("meshplane_reconcile_round_seconds", "One reconcile round", buckets=BUCKETS,
                                       registry=registry)
        self.convergence = Histogram("meshplane_convergence_seconds", "Round that changed a proxy's configuration "
                                     "to that proxy acknowledging every type", buckets=BUCKETS, registry=registry)
        self.certificates = Counter("meshplane_workload_certificates_issued", "Workload certificates signed",
                                    registry=registry)
        self.expiry = Gauge("meshplane_certificate_earliest_expiry_seconds", "Seconds until the first held "
                            "workload certificate expires", registry=registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
