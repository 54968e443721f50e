"""Certificates for the C2PA tests, made here with `cryptography`: a test root CA and leaves of every kind the
start-up check must accept or refuse. ES256 (P-256) keys; the good leaf has emailProtection EKU, SKI/AKI."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Pair:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "City Archive (test)")])


def make(cn: str, issuer: Pair | None = None, *, ca: bool = False,
         eku: tuple | None = (ExtendedKeyUsageOID.EMAIL_PROTECTION,), days: tuple[int, int] = (-1, 365)) -> Pair:
    """A certificate for ``cn``, issued by ``issuer`` (self-signed when None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_key = issuer.key if issuer else key
    b = (x509.CertificateBuilder().subject_name(_name(cn))
         .issuer_name(issuer.cert.subject if issuer else _name(cn))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW + dt.timedelta(days=days[0])).not_valid_after(NOW + dt.timedelta(days=days[1]))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                        critical=False)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                      crl_sign=ca, encipher_only=False, decipher_only=False), critical=True))
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return Pair(key, b.sign(issuer_key, hashes.SHA256()))


def root_ca() -> Pair:
    return make("Test Root CA", ca=True, eku=None)


def leaf(ca: Pair, **kwargs) -> Pair:
    return make("Colorize signing (test)", ca, **kwargs)
