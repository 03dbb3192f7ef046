"""Workload credentials: per-proxy keys, one CA per mesh, renewal at 2/3 of the lifetime."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from meshplane.controlplane.credentials import Credentials
from meshplane.injector.ca import PrivateKey, ca_directory
from tests.catools import replace_intermediate

TD = "shop.shop.mesh.local"
REVIEWS = f"spiffe://{TD}/ns/shop/virtualservice/reviews"
RATINGS = f"spiffe://{TD}/ns/shop/virtualservice/ratings"


class Clock:
    def __init__(self) -> None:
        self.at = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.at


def creds(tmp_path: Path, clock: Clock) -> Credentials:
    return Credentials(tmp_path, ttl=timedelta(seconds=30), now=clock, jitter=lambda: 0.0)


def test_each_proxy_gets_its_own_key_and_a_certificate_naming_its_service(tmp_path: Path) -> None:
    clock = Clock()
    c = creds(tmp_path, clock)
    a = c.for_proxy("reviews-a", "shop/shop", TD, REVIEWS)
    b = c.for_proxy("reviews-b", "shop/shop", TD, REVIEWS)
    assert a.key.pem().reveal() != b.key.pem().reveal()
    cert = a.issued.certificate()
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [REVIEWS]
    ca_dir = next((tmp_path / "ca").iterdir())
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700


def test_credentials_are_reused_until_due_then_renewed_at_two_thirds(tmp_path: Path) -> None:
    clock = Clock()
    c = creds(tmp_path, clock)
    first = c.for_proxy("reviews-a", "shop/shop", TD, REVIEWS)
    assert c.next_renewal() == first.renew_at
    assert first.renew_at - first.issued.issued_at == timedelta(seconds=20), "2/3 of 30 s with zero jitter"
    clock.at += timedelta(seconds=19)
    assert c.due() == [] and c.for_proxy("reviews-a", "shop/shop", TD, REVIEWS) is first
    clock.at += timedelta(seconds=2)
    assert c.due() == ["reviews-a"]
    renewed = c.for_proxy("reviews-a", "shop/shop", TD, REVIEWS)
    assert renewed.issued.serial != first.issued.serial and c.issued_count == 2


def test_a_changed_identity_gets_a_new_certificate_at_once(tmp_path: Path) -> None:
    c = creds(tmp_path, Clock())
    first = c.for_proxy("node", "shop/shop", TD, REVIEWS)
    second = c.for_proxy("node", "shop/shop", TD, RATINGS)
    assert second.identity == RATINGS and second.issued.serial != first.issued.serial


def test_the_mesh_ca_survives_a_restart(tmp_path: Path) -> None:
    first = creds(tmp_path, Clock()).authority("shop/shop", TD).trust_bundle_pem()
    again = creds(tmp_path, Clock()).authority("shop/shop", TD).trust_bundle_pem()
    assert first == again


def test_a_new_intermediate_is_picked_up_and_every_proxy_of_the_mesh_reissued(tmp_path: Path) -> None:
    c = Credentials(tmp_path, ttl=timedelta(hours=1))
    first = c.for_proxy("reviews-a", "shop/shop", TD, REVIEWS)
    assert c.reload_changed() == []
    intermediate = replace_intermediate(ca_directory(tmp_path, "shop/shop"), TD)
    assert c.reload_changed() == ["reviews-a"]
    again = c.for_proxy("reviews-a", "shop/shop", TD, REVIEWS)
    assert again.issued.serial != first.issued.serial
    assert again.issued.certificate().issuer == intermediate.subject
    issuer_serials = {x.serial_number for x in x509.load_pem_x509_certificates(again.issued.chain_pem)}
    assert intermediate.serial_number in issuer_serials, "the chain sent to Envoy carries the new intermediate"


def test_a_broken_replacement_keeps_the_running_ca(tmp_path: Path) -> None:
    c = Credentials(tmp_path, ttl=timedelta(hours=1))
    held = c.for_proxy("reviews-a", "shop/shop", TD, REVIEWS)
    directory = ca_directory(tmp_path, "shop/shop")
    key = directory / "ca-key.pem"
    key.write_bytes(PrivateKey.generate().pem().reveal())  # a key that does not match the certificate
    assert c.reload_changed() == []
    assert c.for_proxy("reviews-a", "shop/shop", TD, REVIEWS) is held


def test_credentials_of_proxies_that_left_are_dropped(tmp_path: Path) -> None:
    c = creds(tmp_path, Clock())
    gone = c.for_proxy("reviews-a", "shop/shop", TD, REVIEWS)
    kept = c.for_proxy("reviews-b", "shop/shop", TD, REVIEWS)
    c.keep_only({"reviews-b"})
    assert c.for_proxy("reviews-b", "shop/shop", TD, REVIEWS) is kept
    assert c.for_proxy("reviews-a", "shop/shop", TD, REVIEWS).issued.serial != gone.issued.serial, "its key was dropped"
