"""The last steps of every output, in one place for every entry point (the colorize job, backfills, the CLI,
the images the evaluate job writes): pixels -> encoded file -> the source's metadata and our provenance XMP ->
C2PA signature (last) -> the hashes the metrics keep.

    record = archival.derivation(uri, source_bytes, model_info.name, model_info.weights_sha256, "JPEG")
    out = archival.finish(rgb, "tiff", record, source=source_bytes, colour=decoded.colour, signer=signer)
    storage.write_bytes(key, out.data)   # metrics: source_sha256, output_sha256, output_bytes, metadata

The source's bytes are the ones the stage already read (no extra GET). Masters (TIFF, or 16-bit PNG) never
get the visible label; configs refuse the combination at start-up, and :func:`finish` refuses it too.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np

from . import fixity, imageio, metadata, provenance
from .metadata import Derivation

__all__ = ["Finished", "derivation", "finish", "is_master"]


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
