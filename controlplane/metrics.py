"""The control plane's own metrics, in Prometheus' exposition format (``GET /metrics`` on the admin address).

One registry per control plane (not prometheus-client's global one), so tests and several planes in
one process never mix their numbers. Names and labels are a contract for dashboards:

| metric | kind | labels | meaning |
|---|---|---|---|
| ``meshplane_proxies_connected`` | gauge | ``kind`` (sidecar, gateway) | proxies with an open ADS stream |
| ``meshplane_xds_pushes_total`` | counter | ``type`` (CDS, EDS, LDS, RDS, SDS) | responses sent |
| ``meshplane_xds_acks_total`` / ``meshplane_xds_nacks_total`` | counter | ``type`` | what proxies answered |
| ``meshplane_xds_push_seconds`` | histogram | ``type`` | a response sent → the proxy's ACK of it |
| ``meshplane_reconcile_round_seconds`` | histogram | | one round: sync, build, status, render, publish |
| ``meshplane_build_seconds`` | histogram | | a round's build: accepted objects → the IR |
| ``meshplane_translate_seconds`` | histogram | | a round's renders: translate and serialise every changed proxy |
| ``meshplane_proxy_config_bytes`` | histogram | | one proxy's serialized configuration (every type), per publish |
| ``meshplane_webhook_requests_total`` | counter | ``webhook``, ``outcome`` | admission reviews answered |
| ``meshplane_webhook_seconds`` | histogram | ``webhook``, ``outcome`` | time to answer one |
| ``meshplane_convergence_seconds`` | histogram | | round start → the changed proxy ACKed every type |
| ``meshplane_workload_certificates_issued_total`` | counter | | workload certificates signed |
| ``meshplane_certificate_earliest_expiry_seconds`` | gauge | | seconds to the first held certificate's expiry |
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BYTE_BUCKETS = (1_000, 4_000, 16_000, 64_000, 256_000, 1_000_000, 4_000_000, 16_000_000)
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
        self.push_seconds = Histogram("meshplane_xds_push_seconds", "xDS response sent to its ACK", ["type"],
                                      buckets=BUCKETS, registry=registry)
        self.build_seconds = Histogram("meshplane_build_seconds", "Building the IR from the accepted objects",
                                       buckets=FAST_BUCKETS, registry=registry)
        self.translate_seconds = Histogram("meshplane_translate_seconds", "Translating and serialising the proxies "
                                           "one round changes", buckets=FAST_BUCKETS, registry=registry)
        self.config_bytes = Histogram("meshplane_proxy_config_bytes", "Serialized configuration of one proxy",
                                      buckets=BYTE_BUCKETS, registry=registry)
        self.webhook_requests = Counter("meshplane_webhook_requests", "Admission reviews answered",
                                        ["webhook", "outcome"], registry=registry)
        self.webhook_seconds = Histogram("meshplane_webhook_seconds", "Time to answer an admission review",
                                         ["webhook", "outcome"], buckets=FAST_BUCKETS, registry=registry)
        self.round_seconds = Histogram("meshplane_reconcile_round_seconds", "One reconcile round", buckets=BUCKETS,
                                       registry=registry)
        self.convergence = Histogram("meshplane_convergence_seconds", "Round that changed a proxy's configuration "
                                     "to that proxy acknowledging every type", buckets=BUCKETS, registry=registry)
        self.certificates = Counter("meshplane_workload_certificates_issued", "Workload certificates signed",
                                    registry=registry)
        self.expiry = Gauge("meshplane_certificate_earliest_expiry_seconds", "Seconds until the first held "
                            "workload certificate expires", registry=registry)

    def webhook(self, webhook: str, outcome: str, seconds: float) -> None:
        """One admission review answered (the webhook server's observer)."""
        self.webhook_requests.labels(webhook, outcome).inc()
        self.webhook_seconds.labels(webhook, outcome).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
