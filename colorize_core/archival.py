"""The last steps of every output, in one place for every entry point (the colorize job, backfills, the CLI,
the images the evaluate job writes): pixels -> encoded file -> the source's metadata and our provenance XMP ->
C2PA signature (last) -> the hashes the metrics keep.

    settings = archival.OutputSettings("tiff", "auto", signer=archival.load_signer(cfg.provenance, options))
    depth = settings.depth(decoded.bit_depth)             # compose at it: render.compose(..., depth=depth)
    record = archival.derivation(uri, source_bytes, model_info.name, model_info.weights_sha256, "JPEG")
    out = archival.write_output(rgb, key, settings, record, source=source_bytes, colour=decoded.colour,
                                options=options, root=output)   # metrics: out.columns()

:func:`write_output` is the one place an output is finished and written: the colorize job's and the evaluate
job's compose stages and ``colorize image|folder`` all call it. The source's bytes are the ones the caller
already read (no extra GET). Masters (TIFF, or 16-bit PNG) never get the visible label; configs refuse the
combination at start-up, and :func:`finish` refuses it too.

The signer is loaded once per process (:func:`load_signer`, cached by its certificate, key and password
variable: a task-based stage sets up per batch) and checked with a test signature once, on the driver or the
CLI at start-up (``check=True``), so a certificate C2PA refuses is one line there, never an error row.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np

from . import fixity, imageio, metadata, provenance, storage
from .metadata import Derivation

__all__ = ["Finished", "OutputSettings", "derivation", "finish", "is_master", "load_signer", "write_output"]


@dataclass(frozen=True)
class Finished:
    """An output's final bytes and what the metrics row records about it."""

    data: bytes
    source_sha256: str
    output_sha256: str
    metadata: str | None  # every metadata block dropped, and why ("; "-joined), or None

    @property
    def output_bytes(self) -> int:
        return len(self.data)

    def columns(self, output_path: str | None = None) -> dict[str, object]:
        """The metrics row's fixity columns (:data:`colorize_core.schema.FIXITY_COLUMNS`)."""
        return {"output_path": output_path, "source_sha256": self.source_sha256,
                "output_sha256": self.output_sha256, "output_bytes": self.output_bytes, "metadata": self.metadata}


@dataclass(frozen=True)
class OutputSettings:
    """How outputs are written: format, requested depth (``auto``/``8``/``16``), quality, visible label, and the
    C2PA signer (None: no manifest; the provenance XMP is always written). A stage builds it in ``setup()``,
    since a signer never pickles."""

    fmt: str = "jpeg"
    requested_depth: str = "auto"
    quality: int = 95
    visible_label: bool = False
    signer: provenance.Signer | None = None
    tsa_url: str | None = None

    def depth(self, source_bits: int) -> int:
        """Bits per sample of one output: ``auto`` follows the source where the format holds it (8 with the
        visible label: labelled files are access copies)."""
        if self.visible_label and str(self.requested_depth) == "auto":
            return 8
        return imageio.output_depth(self.requested_depth, source_bits, self.fmt)


_SIGNERS: dict[tuple, provenance.Signer] = {}


def load_signer(cfg, options: storage.StorageOptions | None = None, *, check: bool = False) -> provenance.Signer | None:
    """The signer a :class:`~colorize_core.config.ProvenanceConfig` names (None when it names none), loaded
    once per process. ``check`` runs :func:`provenance.check_signer` (a test signature): a certificate C2PA
    would refuse raises one :class:`~colorize_core.errors.UserError` line."""
    if cfg is None or not cfg.signing:
        return None
    ident = (cfg.cert, cfg.key, cfg.key_password_env)
    signer = _SIGNERS.get(ident)
    if signer is None:
        signer = provenance.load_local_signer(cfg.cert, cfg.key, options, password_env=cfg.key_password_env)
        if check:
            provenance.check_signer(signer)
        _SIGNERS[ident] = signer
    elif check:
        provenance.check_signer(signer)
    return signer


def is_master(fmt: str, depth: int) -> bool:
    """A preservation master (FADGI's sense: full depth, lossless archival format), which is never stamped."""
    return imageio.canonical_format(fmt) == "tiff" or depth == 16


def derivation(source_id: str, source: bytes, model: str, weights_sha256: str | None,
               source_format: str | None = None, when: str | None = None) -> Derivation:
    """The record an output carries: the source's identifier and the sha256 of its bytes, the model and its
    weights' sha256, now (UTC)."""
    when = when or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Derivation(source_id=source_id, source_sha256=fixity.sha256_hex(source), model=model,
                      weights_sha256=weights_sha256 or "unknown", when=when, source_format=source_format)


def colour_dropped(colour: str | None) -> tuple[str, ...]:
    """A decode's colour-management note, as a dropped-metadata reason when the profile was not used."""
    if colour and ("ignored" in colour or "not applied" in colour):
        return (f"icc: {colour}",)
    return ()


def finish(rgb: np.ndarray, fmt: str, record: Derivation, *, source: bytes, source_format: str | None = None,
           quality: int = 95, colour: str | None = None, signer: provenance.Signer | None = None,
           tsa_url: str | None = None, visible_label: bool = False) -> Finished:
    """Encode ``rgb`` (uint8, or uint16 for PNG/TIFF masters) as ``fmt`` with the source's metadata and our
    XMP, sign it when a signer is given, and hash the result. ``colour`` is the decode's
    :attr:`~colorize_core.imageio.DecodedImage.colour` note (a profile it could not use is reported)."""
    fmt = imageio.canonical_format(fmt)
    depth = 16 if rgb.dtype == np.uint16 else 8
    if visible_label:
        if is_master(fmt, depth):
            raise ValueError("a master (TIFF or 16-bit) never gets the visible label; label access copies only")
        rgb = provenance.stamp_visible_label(rgb)
    source_meta = metadata.read_metadata(source)
    written = metadata.write(imageio.encode_image(rgb, fmt, quality=quality), fmt, source_meta, record)
    data = written.data
    if signer is not None:  # last: every other byte is written
        data = provenance.sign_output(data, fmt, signer, record, source=source, source_format=source_format,
                                      tsa_url=tsa_url)
    return Finished(data=data, source_sha256=record.source_sha256, output_sha256=fixity.sha256_hex(data),
                    metadata=metadata.summarize(source_meta.dropped, written.dropped, colour_dropped(colour)))


def write_output(rgb: np.ndarray, key: str, settings: OutputSettings, record: Derivation, *, source: bytes,
                 source_format: str | None = None, colour: str | None = None,
                 options: storage.StorageOptions | None = None, root: str) -> Finished:
    """:func:`finish`, then the bytes written to ``key`` under the output ``root`` (no link below it followed;
    a failure is an :class:`~colorize_core.errors.OutputError`, see :func:`storage.write_output`)."""
    out = finish(rgb, settings.fmt, record, source=source, source_format=source_format, quality=settings.quality,
                 colour=colour, signer=settings.signer, tsa_url=settings.tsa_url,
                 visible_label=settings.visible_label)
    storage.write_output(key, out.data, options, root=root)
    return out
