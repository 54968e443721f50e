"""Archival outputs end to end: the colorize job (in process, on the session's Ray cluster), its start-up check of
the signing certificate, `colorize verify`, resume against the recorded hashes, and `colorize image`."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
from cryptography.x509.oid import ExtendedKeyUsageOID
from PIL import Image

from colorize_core import cli, fixity, icc, imageio, provenance, storage
from colorize_core.metadata import DIGITAL_SOURCE_TYPE
from jobs import colorize as job
from tests import c2pacerts, jobkit
from tests import metafixtures as mf


@pytest.fixture(scope="module")
def ca():
    return c2pacerts.root_ca()


def _pem_files(folder: Path, pair: c2pacerts.Pair, chain: bytes = b"", key: bytes | None = None) -> list[str]:
    """The job's signing flags for ``pair`` (its certificate then ``chain``; another ``key`` to mismatch)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "chain.pem").write_bytes(pair.cert_pem + chain)
    (folder / "secret-signing-key.pem").write_bytes(key or pair.key_pem)
    return ["--c2pa-cert", str(folder / "chain.pem"), "--c2pa-key", str(folder / "secret-signing-key.pem")]


def _master16() -> tuple[bytes, np.ndarray]:
    """A 16-bit gray TIFF master with far more than 256 levels."""
    yy, xx = np.mgrid[0:72, 0:96]
    arr = (2000 + xx * 600 + yy * 7).astype(np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="minisblack")
    return buf.getvalue(), arr


SOURCES = {
    "scan": mf.archive_jpeg(),  # EXIF (Orientation 6, thumbnail), XMP, IPTC, sRGB ICC, 600 dpi
    "master16": _master16()[0],
    "badexif": mf.archive_jpeg(exif=b"II*\0\xff\xff\xff\x7f" + b"\0" * 24),  # IFD0 offset past the block's end
}


def _inputs(tmp_path: Path) -> str:
    uris = jobkit.put_images(str(tmp_path / "in"), {f"{k}.bin": v for k, v in SOURCES.items()})
    rows = [{"image_id": k, "uri": uris[f"{k}.bin"]} for k in SOURCES]
    rows.append({"image_id": "absent", "uri": str(tmp_path / "in" / "absent.jpg")})
    return jobkit.write_manifest(str(tmp_path / "manifest.parquet"), rows)


def _rows(output: str) -> dict[str, dict]:
    return {r["image_id"]: r for r in jobkit.read_metrics(output).to_pylist()}


def _check_archival(output: Path, fmt: str, rows: dict[str, dict]) -> dict[str, bytes]:
    """What every run's outputs hold, whatever the format; returns the outputs' bytes."""
    files = {}
    for image_id, row in rows.items():
        if image_id == "absent":
            assert row["status"] == "error"
            assert all(row[c] is None for c in ("output_path", "source_sha256", "output_sha256", "output_bytes",
                                                "metadata")), row
            continue
        assert row["status"] == "ok", row
        data = (output / row["output_path"]).read_bytes()
        files[image_id] = data
        assert row["output_path"] == f"images/{image_id}.{imageio.FORMAT_EXTENSIONS[fmt]}"
        assert row["source_sha256"] == fixity.sha256_hex(SOURCES[image_id])
        assert row["output_sha256"] == fixity.sha256_hex(data) and row["output_bytes"] == len(data)
        assert DIGITAL_SOURCE_TYPE.encode() in data and b"AISystemUsed" in data and b"AISystemVersionUsed" in data
        im = Image.open(io.BytesIO(data))
        assert icc.parse_profile(im.info["icc_profile"]).is_srgb
    scan = Image.open(io.BytesIO(files["scan"]))
    exif = scan.getexif()
    assert exif[0x013B] == mf.ARTIST and exif[0x8298] == mf.COPYRIGHT and exif[0x0112] == 1
    assert exif.get_ifd(0x8769)[0x9003] == mf.TAKEN
    assert scan.size == (48, 64), "pixels upright (the source's Orientation 6 applied)"
    assert tuple(round(v) for v in scan.info["dpi"]) == (600, 600)
    assert mf.IDENTIFIER.encode() in files["scan"] and b"AISystemUsed" in files["scan"]
    assert rows["scan"]["metadata"] is None
    assert rows["badexif"]["metadata"].startswith("exif: unreadable"), rows["badexif"]
    assert mf.IDENTIFIER.encode() in files["badexif"]  # the XMP kept, only the EXIF block dropped
    return files


def test_signed_tiff_masters_then_verify_and_resume(ray_cluster, ca, tmp_path, capfd):
    manifest, out = _inputs(tmp_path), tmp_path / "out"
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    flags = _pem_files(tmp_path / "keys", c2pacerts.leaf(ca), ca.cert_pem)
    args = ["--manifest", manifest, "--output", str(out), "--model", model, "--output-format", "tiff", "--quiet",
            "--max-error-fraction", "0.5",
            *flags]
    assert job.main(args) == job.EXIT_OK
    rows = _rows(str(out))
    files = _check_archival(out, "tiff", rows)

    # 16-bit: the master's output is 16-bit and keeps its tonal levels; the 8-bit scans stay 8-bit.
    master = tifffile.imread(io.BytesIO(files["master16"]))
    assert master.dtype == np.uint16 and len(np.unique(master[..., 1])) > 4000
    assert tifffile.imread(io.BytesIO(files["scan"])).dtype == np.uint8

    # Content Credentials: trusted under the test CA, saying what the XMP says; one changed byte breaks it.
    state, manifest_json = provenance.read_manifest(files["scan"], "tiff", ca.cert_pem)
    assert state == "Trusted"
    actions = [a for x in manifest_json["assertions"] if x["label"].startswith("c2pa.actions")
               for a in x["data"]["actions"]]
    assert [a["action"] for a in actions] == ["c2pa.opened", "c2pa.edited"]
    assert actions[1]["digitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert {i["relationship"] for i in manifest_json["ingredients"]} == {"parentOf", "inputTo"}

    # The key, its bytes and its path, is nowhere: not in config.json, run.json, summary.json, metrics or output.
    key_pem = (tmp_path / "keys" / "secret-signing-key.pem").read_bytes()
    said = capfd.readouterr()
    records = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for secret in (b"secret-signing-key", key_pem.splitlines()[1]):
        assert secret not in records and secret.decode() not in said.out + said.err
    assert json.loads((out / "config.json").read_text())["provenance"]["key"] == "***"

    # verify: all good; then a deleted and a changed output (changed in its XMP: it still decodes, same size).
    assert cli.main(["verify", "--output", str(out)]) == 0
    assert "3 outputs checked: 0 missing, 0 changed" in capfd.readouterr().out
    (out / "images" / "badexif.tif").unlink()
    tampered = files["master16"].replace(b"compositeWith", b"compositeWITH")
    (out / "images" / "master16.tif").write_bytes(tampered)
    assert provenance.read_manifest(tampered, "tiff", ca.cert_pem)[0] == "Invalid"
    assert cli.main(["verify", "--output", str(out), "--bagit"]) == 1
    said = capfd.readouterr().out
    assert "missing: images/badexif.tif" in said and "changed: images/master16.tif" in said
    bag = (out / "manifest-sha256.txt").read_text().splitlines()
    assert sorted(bag) == sorted(f"{r['output_sha256']}  {r['output_path']}" for r in rows.values() if r["output_path"])

    # Resume (the markers gone, as after a crash past the metrics): the changed output is not reused but made
    # again, the deleted one too; the intact one is reused as it is.
    for marker in (out / "_state" / "completions").glob("*.done"):
        marker.unlink()
    intact = (out / "images" / "scan.tif").stat().st_mtime_ns
    assert job.main(args) == job.EXIT_OK
    assert (out / "images" / "scan.tif").stat().st_mtime_ns == intact
    assert (out / "images" / "master16.tif").read_bytes() != tampered
    assert cli.main(["verify", "--output", str(out), "--bagit"]) == 0
    # The manifest is BagIt's payload-manifest format, which sha256sum reads too (from the run's root).
    assert subprocess.run(["sha256sum", "--check", "--quiet", "manifest-sha256.txt"], cwd=out).returncode == 0
    again = _rows(str(out))
    assert again["scan"]["output_sha256"] == rows["scan"]["output_sha256"]
    assert provenance.read_manifest((out / "images" / "master16.tif").read_bytes(), "tiff", ca.cert_pem)[0] == "Trusted"


def test_jpeg_access_copies_unsigned(ray_cluster, tmp_path):
    manifest, out = _inputs(tmp_path), tmp_path / "out"
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    assert job.main(["--manifest", manifest, "--output", str(out), "--model", model, "--quiet",
                     "--max-error-fraction", "0.5"]) == job.EXIT_OK
    files = _check_archival(out, "jpeg", _rows(str(out)))
    assert provenance.read_manifest(files["scan"], "jpeg") == (None, None)  # no certificate: XMP only
    assert imageio.decode_image(files["master16"]).rgb.dtype == np.uint8  # JPEG holds 8 bits


REFUSED = {
    "self-signed": (lambda ca: (c2pacerts.make("self"), b""), "is self-signed"),
    "a CA": (lambda ca: (c2pacerts.make("sub CA", ca, ca=True), ca.cert_pem), "is a CA certificate"),
    "no EKU": (lambda ca: (c2pacerts.leaf(ca, eku=None), ca.cert_pem), "has no extended key usage"),
    "wrong EKU": (lambda ca: (c2pacerts.leaf(ca, eku=(ExtendedKeyUsageOID.SERVER_AUTH,)), ca.cert_pem),
                  "none of which C2PA accepts"),
    "expired": (lambda ca: (c2pacerts.leaf(ca, days=(-30, -1)), ca.cert_pem), "expired on"),
}


@pytest.mark.parametrize("kind", [*REFUSED, "mismatched key"])
def test_a_certificate_c2pa_refuses_stops_the_job_at_start_up(ca, kind, tmp_path, capsys):
    if kind == "mismatched key":
        pair, chain, expected = c2pacerts.leaf(ca), ca.cert_pem, "does not match the key"
        flags = _pem_files(tmp_path / "keys", pair, chain, key=c2pacerts.leaf(ca).key_pem)
    else:
        make, expected = REFUSED[kind]
        pair, chain = make(ca)
        flags = _pem_files(tmp_path / "keys", pair, chain)
    code = job.main(["--output", str(tmp_path / "out"), "--quiet", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == job.EXIT_FAILED and len(err) == 1, err
    assert err[0].startswith("error: C2PA signing certificate") and expected in err[0], err
    assert "secret-signing-key" not in err[0]
    assert not (tmp_path / "out").exists(), "nothing is written before the check"


def test_cli_image_keeps_metadata_and_signs(ca, tmp_path, capsys):
    (tmp_path / "scan.jpg").write_bytes(SOURCES["scan"])
    (tmp_path / "master.tif").write_bytes(SOURCES["master16"])
    flags = _pem_files(tmp_path / "keys", c2pacerts.leaf(ca), ca.cert_pem)
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    assert cli.main(["image", str(tmp_path / "scan.jpg"), "-o", str(tmp_path / "o" / "scan.jpg"), "--model", model,
                     *flags]) == 0
    data = (tmp_path / "o" / "scan.jpg").read_bytes()
    exif = Image.open(io.BytesIO(data)).getexif()
    assert exif[0x013B] == mf.ARTIST and exif[0x0112] == 1 and mf.IDENTIFIER.encode() in data
    assert provenance.read_manifest(data, "jpeg", ca.cert_pem)[0] == "Trusted"
    assert cli.main(["image", str(tmp_path / "master.tif"), "-o", str(tmp_path / "o" / "m.png"), "--model", model]) == 0
    assert imageio.decode_image((tmp_path / "o" / "m.png").read_bytes()).rgb.dtype == np.uint16  # auto: 16-bit PNG
    assert cli.main(["image", str(tmp_path / "scan.jpg"), "-o", str(tmp_path / "o" / "l.tif"), "--model", model,
                     "--visible-label"]) == 1
    assert "masters" in capsys.readouterr().err and not (tmp_path / "o" / "l.tif").exists()
