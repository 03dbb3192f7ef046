"""Benchmark: workload certificates the mesh CA issues per second (ECDSA P-256). Prints JSON.

Two rates over ``--count`` certificates: with key generation (``issue_for``: what the control plane
pays when it holds each proxy's key, as SDS does) and without it (``issue`` for a public key generated
beforehand: a proxy that sends its own key). The CA is self-signed, created in a temporary directory that
is removed afterwards; one warm-up certificate is issued before timing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import cryptography

from meshplane.injector.ca import CertificateAuthority, PrivateKey, spiffe_id_for_virtual_service

TRUST_DOMAIN = "bench.bench.mesh.local"
TTL = timedelta(hours=24)


def identities(count: int) -> list[str]:
    return [spiffe_id_for_virtual_service(TRUST_DOMAIN, "bench", f"svc-{i}") for i in range(count)]


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def measure(ca: CertificateAuthority, count: int) -> dict[str, float]:
    """Issue ``count`` certificates each way; certificates per second and microseconds per certificate."""
    ids = identities(count)
    start = time.perf_counter()
    for spiffe_id in ids:
        ca.issue_for(spiffe_id, TTL)
    with_keygen = time.perf_counter() - start
    keys = [PrivateKey.generate().public_key() for _ in ids]
    start = time.perf_counter()
    for spiffe_id, key in zip(ids, keys, strict=True):
        ca.issue(spiffe_id, key, TTL)
    without_keygen = time.perf_counter() - start
    return {"with_keygen_per_s": rate(count, with_keygen), "without_keygen_per_s": rate(count, without_keygen),
            "with_keygen_us_each": round(with_keygen / count * 1e6, 1),
            "without_keygen_us_each": round(without_keygen / count * 1e6, 1)}


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=positive, default=500, help="certificates per measurement (default 500)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        ca = CertificateAuthority.create_or_load(Path(scratch) / "ca", TRUST_DOMAIN)
        ca.issue_for(identities(1)[0], TTL)  # warm-up
        figures = measure(ca, args.count)
    print(json.dumps({"benchmark": "ca", "key": "ECDSA P-256", "count": args.count, **figures,
                      "python": sys.version.split()[0], "cryptography": cryptography.__version__,
                      "machine": platform.machine()}))


if __name__ == "__main__":
    main()
