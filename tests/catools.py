"""Test helper: replace a mesh CA's intermediate with a new one signed by the same root."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from meshplane.injector import pki


def replace_intermediate(directory: Path, trust_domain: str) -> x509.Certificate:
    """Write a new intermediate (new key) under the same root, as an operator would; returns it."""
    root = x509.load_pem_x509_certificate((directory / "root-cert.pem").read_bytes())
    root_key = pki.PrivateKey.from_pem(pki.SecretBytes((directory / "root-key.pem").read_bytes()))
    key = pki.PrivateKey.generate()
    intermediate = pki.build_intermediate(key, root, root_key, trust_domain, now=datetime.now(UTC))
    _write(directory / "ca-key.pem", key.pem().reveal(), 0o600)
    _write(directory / "ca-cert.pem", pki.pem(intermediate), 0o644)
    _write(directory / "cert-chain.pem", pki.pem_all([intermediate, root]), 0o644)
    return intermediate


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
