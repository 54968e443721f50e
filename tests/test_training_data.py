"""scripts/get_training_data.py pieces that need no download: the Qt .rcc reader, DEP-5 licence lookup,
the split by picture, and the colour rebalancing of the l1_rebalanced loss."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import get_training_data as gtd  # noqa: E402
import qtrcc  # noqa: E402

from colorize_core import training  # noqa: E402


def build_rcc(version: int = 2) -> bytes:
    """/d/a.bin (zlib, qCompress framing) and /b.txt (stored), written as rcc -binary lays them out."""
    names, name_off = b"", {}
    for n in ("d", "a.bin", "b.txt"):
        name_off[n] = len(names)
        names += struct.pack(">HI", len(n), 0) + n.encode("utf-16-be")
    a, b = b"hello rcc " * 50, b"plain"
    blobs = b""
    data_off = {"a.bin": len(blobs)}
    packed = struct.pack(">I", len(a)) + zlib.compress(a)
    blobs += struct.pack(">I", len(packed)) + packed
    data_off["b.txt"] = len(blobs)
    blobs += struct.pack(">I", len(b)) + b

    def node(name, flags, x, y):
        fields = struct.pack(">IH", name_off.get(name, 0), flags)
        fields += struct.pack(">II", x, y) if flags & qtrcc.FLAG_DIR else struct.pack(">HHI", 0, 0, y)
        return fields + (struct.pack(">Q", 0) if version >= 2 else b"")

    tree = (node("", qtrcc.FLAG_DIR, 2, 1) + node("d", qtrcc.FLAG_DIR, 1, 3)
            + node("b.txt", 0, 0, data_off["b.txt"]) + node("a.bin", qtrcc.FLAG_ZLIB, 0, data_off["a.bin"]))
    header_len = 20 + (4 if version >= 3 else 0)
    tree_at, blobs_at = header_len, header_len + len(tree)
    names_at = blobs_at + len(blobs)
    header = b"qres" + struct.pack(">IIII", version, tree_at, blobs_at, names_at)
    if version >= 3:
        header += struct.pack(">I", 0)
    return header + tree + blobs + names, {"/d/a.bin": a, "/b.txt": b}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_reader_walks_the_tree_and_decompresses(version):
    data, expected = build_rcc(version)
    assert dict(qtrcc.read_rcc(data)) == expected
    with pytest.raises(qtrcc.RccError, match="qres"):
        list(qtrcc.read_rcc(b"nope" + data[4:]))


def test_dep5_licence_last_matching_stanza_wins_and_webp_matches_jpg():
    text = ("Files: *\nCopyright: x\nLicense: GPL-3+\n\n"
            "Files: src/activities/fish/a.jpg\n src/activities/fish/b.jpg\nCopyright: y\nLicense: CC-BY-SA-3.0\n\n"
            "Files: src/activities/fish/b.*\nCopyright: z\nLicense: public-domain\n\n"
            "License: GPL-3+\n long text\n")
    stanzas = gtd.dep5_stanzas(text)
    assert [lic for _, lic in stanzas] == ["GPL-3+", "CC-BY-SA-3.0", "public-domain"]
    assert gtd.dep5_license(stanzas, "src/activities/fish/a.webp", "?") == "CC-BY-SA-3.0"
    assert gtd.dep5_license(stanzas, "src/activities/fish/b.webp", "?") == "public-domain"
    assert gtd.dep5_license(stanzas, "src/other.webp", "?") == "GPL-3+"


def test_split_is_by_picture_and_deterministic():
    assert gtd.group_of("kphotoalbum/grand_canyon_2.jpg") == gtd.group_of("kphotoalbum/grand_canyon_3.jpg")
    assert gtd.group_of("gnome/adwaita-d.webp") == gtd.group_of("gnome/adwaita-l.webp")
    assert gtd.group_of("plasma/Kite/contents/images/1920x1080.jpg") == "plasma/Kite"
    # A long number is a photo's identity, not a variant number.
    assert gtd.group_of("tiktok-interior/pexels-4400637.jpg") != gtd.group_of("tiktok-interior/pexels-7303782.jpg")
    assert gtd.is_held_out("skimage/chelsea", 0.15) and not gtd.is_held_out("skimage/astronaut", 0.15)
    assert not gtd.is_held_out("tuxpaint/animals/birds/owl", 1.0)  # composites are training only
    groups = [f"gcompris/x/{i}" for i in range(2000)]
    held = [g for g in groups if gtd.is_held_out(g, 0.15)]
    assert 0.12 < len(held) / len(groups) < 0.18 and held == [g for g in groups if gtd.is_held_out(g, 0.15)]


def test_composite_is_reproducible_and_keeps_the_cutout():
    from PIL import Image

    bg = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    cut = Image.new("RGBA", (50, 80), (255, 0, 0, 0))
    cut.paste((255, 0, 0, 255), (10, 10, 40, 70))
    a = np.asarray(gtd.composite(cut, bg, "tuxpaint/x", 64))
    assert a.shape == (64, 64, 3) and np.array_equal(a, np.asarray(gtd.composite(cut, bg, "tuxpaint/x", 64)))
    assert ((a == [255, 0, 0]).all(-1)).sum() > 200


def test_rebalance_weights_average_one_and_favour_rare_colours():
    gray = torch.zeros(3, 32, 32)
    red = torch.zeros(3, 8, 8)
    red[1] = 60.0
    counts = training.ab_histogram([gray, red], stride=1)
    assert counts.sum() == 32 * 32 + 8 * 8
    for power in (1.0, 0.5):
        w = training.rebalance_weights(counts, mix=0.5, power=power)
        p = counts / counts.sum()
        assert float((w.double() * p).sum()) == pytest.approx(1.0, abs=1e-5)
        i_gray = int(training.ab_bin_index(torch.zeros(1, 2, 1, 1)))
        i_red = int(training.ab_bin_index(torch.tensor([60.0, 0.0]).view(1, 2, 1, 1)))
        assert w[i_red] > w[i_gray]
    assert torch.allclose(training.rebalance_weights(counts, power=0.0), torch.ones_like(w))
    pred, target = torch.zeros(2, 2, 4, 4), torch.full((2, 2, 4, 4), 11.0)
    plain = training.regression_loss(pred, target, "l1")
    assert training.regression_loss(pred, target, "l1_rebalanced") == pytest.approx(float(plain))
