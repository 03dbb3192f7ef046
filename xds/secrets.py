"""Envoy Secret messages for SDS: a proxy's certificate chain and key, and a trust bundle.

Secrets travel on the proxy's own ADS stream, so a key is only ever sent to the proxy it was issued
for. The messages carry PEM bytes inline; the caller owns the key material and this module never
logs or keeps it.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2


def build_certificate_secret(name: str, chain_pem: bytes, key_pem: bytes) -> secret_pb2.Secret:
    """A tls_certificate secret: the leaf followed by its intermediates, and the private key."""
    certificate = common_pb2.TlsCertificate(certificate_chain=base_pb2.DataSource(inline_bytes=chain_pem),
                                            private_key=base_pb2.DataSource(inline_bytes=key_pem))
    return secret_pb2.Secret(name=name, tls_certificate=certificate)


def build_trust_secret(name: str, bundle_pem: bytes) -> secret_pb2.Secret:
    """A validation_context secret: the roots a peer's certificate must chain to."""
    context = common_pb2.CertificateValidationContext(trusted_ca=base_pb2.DataSource(inline_bytes=bundle_pem))
    return secret_pb2.Secret(name=name, validation_context=context)
