"""Test helper: replace a mesh CA's intermediate with a new one signed by the same root."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from meshplane.controlplane.state import write_atomic
from meshplane.injector import pki


def replace_intermediate(directory: Path, trust_domain: str) -> x509.Certificate:
    """Write a new intermediate (new key) under the same root, as an operator would; returns it."""
    root = x509.load_pem_x509_certificate((directory / "root-cert.pem").read_bytes())
    root_key = pki.PrivateKey.from_pem(pki.SecretBytes((directory / "root-key.pem").read_bytes()))
    key = pki.PrivateKey.generate()
    intermediate = pki.build_intermediate(key, root, root_key, trust_domain, now=datetime.now(UTC))
    write_atomic(directory / "ca-key.pem", key.pem().reveal(), 0o600)
    write_atomic(directory / "ca-cert.pem", pki.pem(intermediate))
    write_atomic(directory / "cert-chain.pem", pki.pem_all([intermediate, root]))
    return intermediate
