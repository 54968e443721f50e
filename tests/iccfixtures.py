"""ICC profiles built byte by byte for the tests (nothing downloaded): v2 display profiles with a gray tone
curve or RGB colorants and curves, the kinds archives' scans carry (Gray Gamma 2.2, Dot Gain 20 %, Adobe RGB).
LittleCMS reads them (tests check that), so they are real profiles, not something only our parser accepts."""

from __future__ import annotations

import struct

import numpy as np

D50 = (0.9642, 1.0, 0.8249)
# Adobe RGB (1998) colorants adapted to D50, as Adobe's own profile stores them; its gamma is 563/256.
ADOBE_RGB_COLORANTS = ((0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087), (0.14919, 0.06322, 0.74457))
ADOBE_RGB_GAMMA = 563 / 256


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _desc(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + b"\0" * 8 + b"\0\0" + b"\0" + b"\0" * 67


def curve_gamma(gamma: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def curve_table(values) -> bytes:
    values = np.clip(np.rint(np.asarray(values, np.float64) * 65535), 0, 65535).astype(">u2")
    return b"curv\0\0\0\0" + struct.pack(">I", len(values)) + values.tobytes() + (b"\0\0" if len(values) % 2 else b"")


def dot_gain_curve(gain: float = 0.20, n: int = 256) -> bytes:
    """A print dot-gain curve as gray profiles store it (device ink -> luminance): 50 % ink prints as 50 % + gain."""
    ink = 1.0 - np.linspace(0.0, 1.0, n)  # device 0 is black: full ink
    printed = ink + 4 * gain * ink * (1 - ink)  # a parabola through 0, 1 and (0.5, 0.5 + gain)
    return curve_table(1.0 - printed)


def _profile(space: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    entries, blobs = [], []
    for sig, blob in tags:
        blob += b"\0" * (-len(blob) % 4)
        entries.append(struct.pack(">4sII", sig, offset, len(blob)))
        blobs.append(blob)
        offset += len(blob)
    size = offset
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntr" + space + b"XYZ "
              + b"\0" * 12 + b"acsp" + b"APPL" + b"\0" * 4 + b"\0" * 8 + b"\0" * 8 + b"\0" * 4
              + _s15(D50[0]) + _s15(D50[1]) + _s15(D50[2]) + b"\0" * 4 + b"\0" * 16 + b"\0" * 28)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(entries) + b"".join(blobs)


def gray_profile(curve: bytes, name: str) -> bytes:
    return _profile(b"GRAY", [(b"desc", _desc(name)), (b"wtpt", _xyz(*D50)), (b"kTRC", curve),
                              (b"cprt", b"text\0\0\0\0no copyright\0")])


def rgb_profile(colorants, curve: bytes, name: str) -> bytes:
    (r, g, b) = colorants
    return _profile(b"RGB ", [(b"desc", _desc(name)), (b"wtpt", _xyz(*D50)), (b"rXYZ", _xyz(*r)),
                              (b"gXYZ", _xyz(*g)), (b"bXYZ", _xyz(*b)), (b"rTRC", curve), (b"gTRC", curve),
                              (b"bTRC", curve), (b"cprt", b"text\0\0\0\0no copyright\0")])


def gray_gamma22() -> bytes:
    return gray_profile(curve_gamma(2.2), "Gray Gamma 2.2")


def dot_gain20() -> bytes:
    return gray_profile(dot_gain_curve(0.20), "Dot Gain 20%")


def adobe_rgb() -> bytes:
    return rgb_profile(ADOBE_RGB_COLORANTS, curve_gamma(ADOBE_RGB_GAMMA), "Adobe RGB (1998)")
