"""Content Credentials (C2PA) for every output, signed with the Content Authenticity Initiative's own library
(``c2pa-python``), and the optional visible "colourised by machine" mark for access copies.

The manifest says what the XMP says (:mod:`colorize_core.metadata`), under a signature anyone can check:

* a ``c2pa.opened`` action on the source, which is the ``parentOf`` ingredient (given its bytes, so a source
  that carries Content Credentials of its own, e.g. from a signing scanner, stays in the chain);
* a ``c2pa.edited`` action with IPTC's ``compositeWithTrainedAlgorithmicMedia`` digitalSourceType and our
  softwareAgent, whose ingredient is the model (``inputTo``, data type ``c2pa.types.model.pytorch``);
* a ``colorize.derivation`` assertion: model, weights sha256, source identifier and sha256, project, version,
  when;
* no thumbnails (they add ~120 KB an image), no network (no remote manifests, no OCSP; a timestamp authority
  only when one is configured).

Signing is the last thing done to an output's bytes: whatever changes after it makes the manifest Invalid.

The key stays behind :class:`Signer`: ``sign(bytes) -> signature``, the certificate chain and the algorithm.
:class:`LocalPemSigner` holds a PEM key in memory; a KMS or HSM signer is another class with the same three
members, and nothing else changes. A signer never pickles (so a key cannot travel through Ray's object store
or land in a log by ``repr``): stages load it in ``setup()`` on each worker. :func:`check_signer` runs at
start-up: it explains in one line what C2PA would refuse about a certificate (self-signed, a CA, no suitable
extended key usage, expired, a key that does not match) and then makes a real test signature.
"""

from __future__ import annotations

import datetime as _dt
import functools
import io
import json
import os
from typing import Protocol, runtime_checkable

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtensionOID
from PIL import Image, ImageDraw, ImageFont

from . import storage
from .imageio import canonical_format
from .errors import UserError
from .metadata import DIGITAL_SOURCE_TYPE, Derivation

__all__ = [
    "ACCEPTED_EKUS",
    "LocalPemSigner",
    "Signer",
    "check_signer",
    "load_local_signer",
    "read_manifest",
    "sign_output",
    "stamp_visible_label",
]

ALGORITHMS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")

ACCEPTED_EKUS = {
    "1.3.6.1.5.5.7.3.4": "emailProtection",
    "1.3.6.1.5.5.7.3.36": "documentSigning",
    "1.3.6.1.4.1.62558.2.1": "c2pa-kp-claimSigning",
    "1.3.6.1.4.1.311.76.59.1.9": "Microsoft C2PA signing",
}
"""Extended key usages a C2PA claim-signing certificate may carry (the C2PA trust model's defaults)."""

MIME_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "tiff": "image/tiff"}
_SOURCE_MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "TIFF": "image/tiff",
                "WEBP": "image/webp", "GIF": "image/gif"}  # the source formats c2pa reads as ingredients
ASSERTION_LABEL = "colorize.derivation"


@runtime_checkable
class Signer(Protocol):
    """What C2PA needs from a key: an algorithm (one of :data:`ALGORITHMS`), the certificate chain (PEM, the
    signing certificate first, then its issuers) and ``sign(data) -> signature`` (ECDSA signatures may be DER
    or raw r||s; RSA is PSS with the hash of the algorithm and a salt of its length)."""

    algorithm: str
    certificate_chain: bytes

    def sign(self, data: bytes) -> bytes: ...


class LocalPemSigner:
    """A PEM private key held in this process. ``description`` names where the certificate came from, for
    messages; the key's bytes are never kept, shown or pickled."""

    def __init__(self, certificate_chain: bytes, key_pem: bytes, *, password: bytes | None = None,
                 description: str = "the signing certificate"):
        self.description = description
        self.certificate_chain = bytes(certificate_chain)
        try:
            self._key = serialization.load_pem_private_key(bytes(key_pem), password=password)
        except (TypeError, ValueError) as exc:
            reason = "it is encrypted: give its password" if "encrypted" in str(exc).lower() or isinstance(
                exc, TypeError) else "not a PEM private key"
            raise UserError(f"C2PA signing key for {description} cannot be read ({reason})") from None
        self.algorithm = _algorithm_for(self._key)

    def sign(self, data: bytes) -> bytes:
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(_HASHES[self.algorithm]()))
        if isinstance(key, rsa.RSAPrivateKey):
            h = _HASHES[self.algorithm]()
            return key.sign(data, padding.PSS(padding.MGF1(h), h.digest_size), h)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        raise UserError(f"unsupported key type {type(key).__name__}")

    def public_key_matches(self, certificate) -> bool:
        fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return self._key.public_key().public_bytes(*fmt) == certificate.public_key().public_bytes(*fmt)

    def __repr__(self) -> str:
        return f"LocalPemSigner({self.algorithm}, {self.description})"

    def __reduce__(self):
        raise TypeError("a signer holds a private key and is never pickled: load it in the stage's setup()")


_HASHES = {"es256": hashes.SHA256, "ps256": hashes.SHA256, "es384": hashes.SHA384, "ps384": hashes.SHA384,
           "es512": hashes.SHA512, "ps512": hashes.SHA512}


def _algorithm_for(key) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curves = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name not in curves:
            raise UserError(f"C2PA signs with EC keys on P-256, P-384 or P-521, not {key.curve.name}")
        return curves[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise UserError(f"C2PA needs RSA keys of at least 2048 bits, this one has {key.key_size}")
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise UserError(f"C2PA cannot sign with a {type(key).__name__}; use an EC (P-256), RSA or Ed25519 key")


def load_local_signer(cert_uri: str, key_uri: str, options: storage.StorageOptions | None = None, *,
                      password_env: str | None = None) -> LocalPemSigner:
    """Certificate chain and key from local paths or ``s3://`` (through :mod:`colorize_core.storage`). The key's
    password, if it has one, comes from the environment variable ``password_env``, never from a config file."""
    chain = _read(cert_uri, options, "certificate chain")
    key = _read(key_uri, options, "key")
    password = None
    if password_env:
        value = os.environ.get(password_env)
        if value is None:
            raise UserError(f"C2PA key password: environment variable {password_env} is not set")
        password = value.encode("utf-8")
    return LocalPemSigner(chain, key, password=password, description=storage.redact_uri(cert_uri) or cert_uri)


def _read(uri: str, options, what: str) -> bytes:
    # The key's path is not shown either: where an organisation keeps its signing keys is its own business.
    where = "the path given as --c2pa-key / provenance.key" if what == "key" else storage.redact_uri(uri)
    try:
        return storage.read_bytes(uri, options, max_bytes=1 << 20)
    except FileNotFoundError:
        raise UserError(f"C2PA signing {what} not found: {where}") from None
    except (PermissionError, IsADirectoryError, NotADirectoryError, storage.NotRegularFileError,
            storage.TooLargeError) as exc:
        raise UserError(f"C2PA signing {what} not readable ({type(exc).__name__}): {where}") from None


# --------------------------------------------------------------------------- start-up check


def _certificates(chain: bytes):
    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError:
        certs = []
    return certs


def certificate_problem(signer: Signer) -> str | None:
    """What C2PA would refuse about the signer's certificate, in a few words, or None."""
    certs = _certificates(signer.certificate_chain)
    if not certs:
        return "holds no PEM certificate"
    leaf = certs[0]
    try:
        ca = leaf.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca
    except x509.ExtensionNotFound:
        ca = False
    if ca:
        return ("is a CA certificate (basicConstraints CA:TRUE); sign with an end-entity certificate that "
                "CA issued")
    if leaf.issuer == leaf.subject:
        return ("is self-signed; C2PA needs a certificate issued by a certificate authority (your own CA is "
                "fine: give the chain, signing certificate first)")
    try:
        ekus = [oid.dotted_string for oid in
                leaf.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value]
    except x509.ExtensionNotFound:
        ekus = []
    accepted = ", ".join(ACCEPTED_EKUS.values())
    if not ekus:
        return f"has no extended key usage; C2PA needs one of {accepted}"
    if not set(ekus) & set(ACCEPTED_EKUS):
        return f"has extended key usage {', '.join(ekus)}, none of which C2PA accepts ({accepted})"
    now = _dt.datetime.now(_dt.timezone.utc)
    if leaf.not_valid_after_utc < now:
        return f"expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
    if leaf.not_valid_before_utc > now:
        return f"is not valid before {leaf.not_valid_before_utc:%Y-%m-%d}"
    if isinstance(signer, LocalPemSigner) and not signer.public_key_matches(leaf):
        return "does not match the key (the key belongs to another certificate)"
    return None


def check_signer(signer: Signer) -> None:
    """Start-up check: raise :class:`UserError` with one line if C2PA would refuse this signer, after a real
    test signature (verified after signing), so that no image ever fails for it."""
    where = getattr(signer, "description", "the signing certificate")
    if signer.algorithm not in ALGORITHMS:
        raise UserError(f"C2PA: unknown signing algorithm {signer.algorithm!r}; one of {', '.join(ALGORITHMS)}")
    problem = certificate_problem(signer)
    if problem:
        raise UserError(f"C2PA signing certificate {where} {problem}")
    probe = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(probe, "JPEG")
    record = Derivation("start-up test", "0" * 64, "test", "0" * 64, _utc_now())
    try:
        sign_output(probe.getvalue(), "jpeg", signer, record, verify=True)
    except Exception as exc:  # noqa: BLE001 - whatever c2pa refuses, said in one line
        raise UserError(f"C2PA refused a test signature with {where}: {_c2pa_reason(exc)}") from None


def _c2pa_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    for prefix in ("Signature: ", "Error during signing: "):
        text = text.replace(prefix, "")
    if "does not match" in text:
        return "the signature does not verify with the certificate's public key (a key that does not match)"
    if "certificate is invalid" in text:
        return ("the certificate is invalid for C2PA (check its key usage digitalSignature, extended key "
                "usage, validity and subject/authority key identifiers)")
    return text[:200]


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- signing


def _settings(verify: bool) -> dict:
    return {"builder": {"thumbnail": {"enabled": False}},
            "verify": {"verify_after_sign": verify, "remote_manifest_fetch": False, "ocsp_fetch": False}}


@functools.lru_cache(maxsize=8)
def _native(signer: Signer, tsa_url: str | None, verify: bool):
    """The c2pa Context and Signer for one of our signers, made once per process."""
    import c2pa

    alg = getattr(c2pa.C2paSigningAlg, signer.algorithm.upper())
    native = c2pa.Signer.from_callback(signer.sign, alg, signer.certificate_chain.decode("ascii"), tsa_url)
    return c2pa.Context.from_dict(_settings(verify)), native


def manifest_definition(fmt: str, record: Derivation, title: str) -> dict:
    """The manifest (see the module docstring); the source ingredient is added from its bytes."""
    agent = {"name": record.software, "version": record.software_version}
    return {
        "claim_generator_info": [agent],
        "title": title,
        "format": MIME_TYPES[fmt],
        "ingredients": [{
            "title": record.model, "format": "application/octet-stream", "relationship": "inputTo",
            "label": "model", "data_types": [{"type": "c2pa.types.model.pytorch"}],
            "description": f"colorization model {record.model}, weights sha256 {record.weights_sha256}",
        }],
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": [
                {"action": "c2pa.opened", "parameters": {"ingredientIds": ["source"]}},
                {"action": "c2pa.edited", "digitalSourceType": DIGITAL_SOURCE_TYPE, "softwareAgent": agent,
                 "description": "colorized by a trained model: the colours are machine-made",
                 "parameters": {"ingredientIds": ["model"]}},
            ]}},
            {"label": ASSERTION_LABEL, "data": {
                "model": record.model, "weights_sha256": record.weights_sha256,
                "source_identifier": record.source_id, "source_sha256": record.source_sha256,
                "software": record.software, "software_version": record.software_version, "when": record.when,
            }},
        ],
    }


def sign_output(data: bytes, fmt: str, signer: Signer, record: Derivation, *, source: bytes | None = None,
                source_format: str | None = None, title: str | None = None, tsa_url: str | None = None,
                verify: bool = False) -> bytes:
    """``data`` (a finished output: pixels and metadata written) with its C2PA manifest embedded.

    ``source`` is the source file's bytes (the ``parentOf`` ingredient; c2pa reads it for Content
    Credentials of its own when its format is one c2pa knows, :data:`_SOURCE_MIME`); without it, or for other
    formats, the ingredient is described by its identifier and sha256 alone. ``verify`` re-validates the
    signed file (the start-up check does; per image it would read every output twice)."""
    import c2pa

    fmt = canonical_format(fmt)
    title = title or os.path.basename(record.source_id) or "colorized image"
    context, native = _native(signer, tsa_url, verify)
    parent = {"title": os.path.basename(record.source_id) or record.source_id, "relationship": "parentOf",
              "label": "source", "description": f"source {record.source_id}, sha256 {record.source_sha256}"}
    mime = _SOURCE_MIME.get(source_format or "")
    definition = manifest_definition(fmt, record, title)
    if source is None or mime is None:
        definition["ingredients"].append({**parent, "format": mime or "application/octet-stream"})
    out = io.BytesIO()
    with c2pa.Builder(definition, context) as builder:
        if source is not None and mime is not None:
            builder.add_ingredient({**parent, "format": mime}, mime, io.BytesIO(source))
        builder.sign(native, MIME_TYPES[fmt], io.BytesIO(data), out)
    return out.getvalue()


def read_manifest(data: bytes, fmt: str, trust_anchors: bytes | None = None) -> tuple[str | None, dict | None]:
    """(validation state: ``Trusted`` / ``Valid`` / ``Invalid``, the active manifest) of a file, trusting
    ``trust_anchors`` (PEM) as roots; ``(None, None)`` if it carries no manifest."""
    import c2pa

    fmt = canonical_format(fmt)
    settings = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    if trust_anchors:
        settings["trust"] = {"user_anchors": trust_anchors.decode("ascii"),
                             "trust_config": "\n".join(ACCEPTED_EKUS) + "\n"}
    with c2pa.Context.from_dict(settings) as ctx:
        reader = c2pa.Reader.try_create(MIME_TYPES[fmt], io.BytesIO(data), None, ctx)
        if reader is None:
            return None, None
        with reader:
            store = json.loads(reader.json())
            state = reader.get_validation_state()
    return state, store["manifests"].get(store.get("active_manifest"))


# --------------------------------------------------------------------------- visible label

VISIBLE_LABEL = "colourised by machine"


def stamp_visible_label(rgb: np.ndarray, text: str = VISIBLE_LABEL) -> np.ndarray:
    """A small, legible mark in the bottom-right corner of an access copy (never a master): white text on
    a dark translucent box, about 2.5 % of the shorter side high, in Pillow's built-in bitmap font scaled
    with nearest-neighbour (crisp, and nothing to download). Returns a new array; uint8 or uint16 as given."""
    rgb = np.asarray(rgb)
    h, w = rgb.shape[:2]
    font = ImageFont.load_default_imagefont()
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    tw, th = right - left + 2, bottom - top + 2
    scale = max(1, round(0.025 * min(h, w) / th))
    while scale > 1 and tw * scale > 0.6 * w:
        scale -= 1
    mask = Image.new("L", (tw, th), 0)
    ImageDraw.Draw(mask).text((1 - left, 1 - top), text, fill=255, font=font)
    mask = np.asarray(mask.resize((tw * scale, th * scale), Image.NEAREST)) > 127
    pad = max(2, scale * 2)
    bh, bw = mask.shape[0] + 2 * pad, mask.shape[1] + 2 * pad
    if bh > h or bw > w:
        return rgb.copy()  # too small an image for a legible mark
    out = rgb.copy()
    maxv = 255 if rgb.dtype == np.uint8 else 65535
    y0, x0 = h - bh - pad, w - bw - pad
    y0, x0 = max(0, y0), max(0, x0)
    box = out[y0: y0 + bh, x0: x0 + bw].astype(np.float32)
    box *= 0.35  # darken behind the text so it reads on any image
    region = box[pad: pad + mask.shape[0], pad: pad + mask.shape[1]]
    region[mask] = maxv
    out[y0: y0 + bh, x0: x0 + bw] = np.rint(box).astype(rgb.dtype)
    return out
