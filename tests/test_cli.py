"""The local command line on a tmp folder, with tiny checkpoints (CPU, no cluster, no network)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from colorize_core.cli import main
from tests.jobkit import tiny_checkpoint

W, H = 64, 48


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=92)
    return buf.getvalue()


def _colour(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([x * 4, y * 5, (x + y) * 2], -1) + rng.integers(0, 40, (H, W, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Colour and gray PNG/JPEG files, one broken file and one non-image; name -> (width, height)."""
    folder = tmp_path_factory.mktemp("in")
    gray = _colour(3).convert("L")
    files = {
        "colour.png": _encode(_colour(0), "PNG"),
        "colour.jpg": _encode(_colour(1), "JPEG"),
        "gray.png": _encode(gray, "PNG"),
        "gray.jpeg": _encode(gray, "JPEG"),
        "tall.png": _encode(_colour(2).rotate(90, expand=True), "PNG"),  # 48x64: geometry is per image
    }
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    (folder / "notes.txt").write_text("not an image, not looked at")
    sizes = {name: Image.open(folder / name).size for name in files}
    assert sizes["tall.png"] == (H, W)
    return folder, sizes


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return tiny_checkpoint(str(root / "ckpt_a"), seed=0), tiny_checkpoint(str(root / "ckpt_b"), seed=1)


def _outputs(folder, ext):
    return {p.name: p for p in folder.iterdir() if p.suffix == ext}


def _out_name(name: str, names, ext: str) -> str:
    """`tall.png` -> `tall.jpg`; inputs sharing a stem (`gray.png`, `gray.jpeg`) keep their suffix."""
    stem = name.rsplit(".", 1)[0]
    clash = sum(n.rsplit(".", 1)[0] == stem for n in names) > 1
    return f"{name if clash else stem}.{ext}"


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert "eccv16" in names and "siggraph17" in names


@pytest.mark.parametrize("source", ["colour.png", "gray.jpeg", "tall.png"])
def test_image_keeps_geometry(images, checkpoints, tmp_path, capsys, source):
    folder, sizes = images
    out = tmp_path / "sub" / "result.jpg"
    assert main(["image", str(folder / source), "-o", str(out), "--model", checkpoints[0]]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as im:
        assert im.format == "JPEG"
        assert im.size == sizes[source]
        assert im.mode == "RGB"


def test_image_format_follows_suffix_or_flag(images, checkpoints, tmp_path):
    folder, sizes = images
    png = tmp_path / "result.png"
    assert main(["image", str(folder / "colour.jpg"), "-o", str(png), "--model", checkpoints[0]]) == 0
    assert Image.open(png).format == "PNG" and Image.open(png).size == sizes["colour.jpg"]
    forced = tmp_path / "result.out"
    assert main(["image", str(folder / "colour.jpg"), "-o", str(forced), "--model", checkpoints[0],
                 "--format", "png"]) == 0
    assert Image.open(forced).format == "PNG"


def test_image_is_deterministic_and_depends_on_the_model(images, checkpoints, tmp_path):
    folder, _ = images
    src = str(folder / "colour.png")
    runs = [(checkpoints[0], "a1.png"), (checkpoints[0], "a2.png"), (checkpoints[1], "b.png")]
    for ckpt, name in runs:
        assert main(["image", src, "-o", str(tmp_path / name), "--model", ckpt]) == 0
    a1, a2, b = (np.asarray(Image.open(tmp_path / name)) for _, name in runs)
    assert np.array_equal(a1, a2)
    assert not np.array_equal(a1, b)


def test_image_registry_model_without_weights_says_how_to_get_them(images, tmp_path, capsys):
    folder, _ = images
    out = tmp_path / "x.jpg"
    code = main(["image", str(folder / "gray.png"), "-o", str(out), "--model", "eccv16"])
    assert code != 0
    err = capsys.readouterr().err
    assert "--weights" in err and "eccv16" in err
    assert not out.exists()


def test_image_broken_input_is_an_error_not_a_traceback(images, checkpoints, tmp_path, capsys):
    folder, _ = images
    code = main(["image", str(folder / "broken.jpg"), "-o", str(tmp_path / "x.jpg"), "--model", checkpoints[0]])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["image", str(folder / "missing.png"), "-o", str(tmp_path / "y.jpg"),
                 "--model", checkpoints[0]]) == 1


def test_folder_one_model(images, checkpoints, tmp_path, capsys):
    folder, sizes = images
    out = tmp_path / "out"
    assert main(["folder", str(folder), "-o", str(out), "--model", checkpoints[0]]) == 0
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "skipped" in err
    assert "notes.txt" not in err
    assert [p.name for p in out.iterdir()] == ["ckpt_a"]  # a checkpoint is labelled by its directory
    written = _outputs(out / "ckpt_a", ".jpg")
    # One output per readable input, none overwritten by an input with the same stem.
    assert sorted(written) == sorted(_out_name(n, sizes, "jpg") for n in sizes)
    assert "tall.jpg" in written and "gray.png.jpg" in written and "gray.jpeg.jpg" in written
    for name, size in sizes.items():
        with Image.open(written[_out_name(name, sizes, "jpg")]) as im:
            assert im.format == "JPEG" and im.size == size
    assert not (out / "compare").exists()


def test_folder_two_models_compare_png(images, checkpoints, tmp_path):
    folder, sizes = images
    out = tmp_path / "out"
    code = main(["folder", str(folder), "-o", str(out), "--model", ",".join(checkpoints), "--format", "png",
                 "--compare"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["ckpt_a", "ckpt_b", "compare"]
    results = []
    for d in (out / "ckpt_a", out / "ckpt_b"):
        written = _outputs(d, ".png")
        assert sorted(written) == sorted(_out_name(n, sizes, "png") for n in sizes)
        assert not _outputs(d, ".jpg")
        for name, size in sizes.items():
            with Image.open(written[_out_name(name, sizes, "png")]) as im:
                assert im.format == "PNG" and im.size == size
        results.append(np.asarray(Image.open(written["tall.png"])))
    assert not np.array_equal(*results)  # two different models, not one written twice
    figures = sorted((out / "compare").iterdir())
    assert [p.name for p in figures] == sorted(_out_name(n, sizes, "png") for n in sizes)
    for fig in figures:
        with Image.open(fig) as im:
            assert im.format == "PNG"
            assert im.size[0] > im.size[1]  # panels side by side


def test_folder_refuses_two_models_that_would_share_a_sub_folder(images, checkpoints, tmp_path, capsys):
    folder, _ = images
    other = tiny_checkpoint(str(tmp_path / "elsewhere" / "ckpt_a"), seed=2)
    out = tmp_path / "out"
    assert main(["folder", str(folder), "-o", str(out), "--model", f"{checkpoints[0]},{other}"]) == 1
    assert "ckpt_a" in capsys.readouterr().err
    assert not out.exists()


def test_folder_without_images_fails(tmp_path, checkpoints, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    assert main(["folder", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--model", checkpoints[0]]) == 1
    assert "no images" in capsys.readouterr().err


def test_folder_of_only_broken_images_fails(tmp_path, checkpoints, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["folder", str(tmp_path / "bad"), "-o", str(tmp_path / "o"), "--model", checkpoints[0]]) == 1
    assert "skipped a.png" in capsys.readouterr().err


def test_weights_for_several_models():
    from colorize_core.cli import _weights_for

    assert _weights_for("eccv16", "official", 2) == "official"
    assert _weights_for("compact", "official", 2) is None  # no released file: keeps its bundled default
    assert _weights_for("ckpts/unet", "official", 2) is None
    assert _weights_for("eccv16", "eccv16=/w/e.pth,siggraph17=s3://b/s.pth", 2) == "/w/e.pth"
    assert _weights_for("compact", "eccv16=/w/e.pth", 2) is None
    assert _weights_for("eccv16", "/w/e.pth", 1) == "/w/e.pth"
    with pytest.raises(SystemExit, match="name=URI"):
        _weights_for("eccv16", "/w/e.pth", 2)
