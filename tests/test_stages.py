"""The per-batch stages on plain dicts: no Ray, no cluster."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from colorize_core import imageio, metrics, render, storage
from colorize_core.models.preprocess import Preprocessing
from colorize_core.stages import (
    COLORFULNESS_STEP,
    ComposeStage,
    DecodeStage,
    InferenceStage,
    output_key,
    short_error,
)
from colorize_core.hints import paint_hints
from tests import jobkit


def _obj(values):
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


@pytest.fixture()
def inputs(tmp_path):
    images = {"c.jpg": jobkit.colour_images(1, size=(90, 70))[0], "g.png": jobkit.gray_image((50, 40)),
              "bad.jpg": b"\xff\xd8\xff garbage", "empty.png": b""}
    uris = jobkit.put_images(str(tmp_path / "in"), images)
    uris["missing.jpg"] = str(tmp_path / "in" / "missing.jpg")
    ids = [name.replace(".", "_") for name in uris]
    batch = {"image_id": _obj(ids), "uri": _obj(list(uris.values())), "shard_id": _obj(["s0"] * len(ids))}
    return batch, tmp_path


def test_paint_hints_and_bad_hints():
    ab, mask = paint_hints([{"x": 0.5, "y": 0.25, "a": 40.0, "b": -20.0}], (16, 16), radius=1)
    assert mask.sum() == 9 and mask[0, 4, 8] == 1
    assert ab[0, 4, 8] == 40 and ab[1, 4, 8] == -20 and ab[:, mask[0] == 0].max() == 0
    ab, mask = paint_hints(None, (8, 8), 2)
    assert mask.sum() == 0
    with pytest.raises(ValueError, match="outside"):
        paint_hints([{"x": 1.5, "y": 0.2, "a": 0, "b": 0}], (8, 8), 1)


def test_short_error_is_one_bounded_line():
    msg = short_error(RuntimeError("line one\nline two " + "x" * 1000))
    assert "\n" not in msg and len(msg) <= 300 and msg.startswith("RuntimeError")
    assert short_error(FileNotFoundError(2, "No such file", "s3://b/k.jpg")) == "missing object: s3://b/k.jpg"
    assert output_key("s3://b/out", "a/b", "jpeg") == "s3://b/out/images/a/b.jpg"


def test_decode_stage_rows_and_errors(inputs):
    batch, tmp_path = inputs
    stage = DecodeStage(storage.StorageOptions(), str(tmp_path / "out"), "jpeg", Preprocessing((32, 32)),
                        more=(Preprocessing((16, 24), "lanczos"), Preprocessing((32, 32), ab_upsample="bicubic")))
    out = stage(batch)
    status = dict(zip(batch["image_id"], out["status"]))
    errors = dict(zip(batch["image_id"], out["error"]))
    assert status == {"c_jpg": "ok", "g_png": "ok", "bad_jpg": "error", "empty_png": "error",
                      "missing_jpg": "error"}
    assert "missing object" in errors["missing_jpg"] and "0 bytes" in errors["empty_png"]
    assert out["l"].shape == (5, 1, 32, 32) and out["l"][0].std() > 1
    # Another model's L, as its preprocessing says; one that differs only in ab_upsample shares "l".
    assert stage.column(Preprocessing((32, 32), ab_upsample="bicubic")) == "l"
    assert set(out) - set(batch) == {"l", "l_16x24_lanczos", "status", "error", "reuse", "seconds"}
    source = jobkit.decode(batch["uri"][0])
    np.testing.assert_array_equal(out["l_16x24_lanczos"][0, 0], Preprocessing((16, 24), "lanczos").model_l(source))
    assert not out["reuse"].any() and (out["seconds"] >= 0).all()


def test_inference_stage_fp32_and_precision_guard(tmp_path):
    model = jobkit.tiny_checkpoint(str(tmp_path / "ckpt"))
    l = np.random.default_rng(0).uniform(0, 100, (3, 1, 64, 64)).astype(np.float32)
    batch = {"image_id": _obj(["a", "b", "c"]), "l": l, "status": _obj(["ok", "error", "ok"]),
             "reuse": np.zeros(3, bool), "seconds": np.zeros(3)}
    stage = InferenceStage(model, precision="fp32", batch_size=2)
    assert pickle.loads(pickle.dumps(stage)) == stage
    stage.setup()
    out = stage(dict(batch))
    assert "l" not in out and out["ab"].shape == (3, 2, 64, 64)
    assert np.abs(out["ab"][1]).max() == 0, "error rows are not run"
    with torch.no_grad():
        expected = stage.module.float()(torch.from_numpy(l[[0, 2]])).numpy()
    np.testing.assert_allclose(out["ab"][[0, 2]], expected, atol=1e-4)
    assert out["seconds"][1] == 0 and out["seconds"][0] > 0

    auto = InferenceStage(model, precision="auto")
    auto.setup()
    assert auto.active_precision in ("fp32", "bf16")
    if auto.active_precision == "bf16":
        assert auto.precision_error <= auto.max_precision_error
    strict = InferenceStage(model, precision="bf16", max_precision_error=1e-9)
    with pytest.raises(RuntimeError, match="use precision fp32"):
        strict.setup()


def test_compose_stage_scores_the_written_file_where_a_reference_needs_it(inputs):
    batch, tmp_path = inputs
    opts = storage.StorageOptions()
    pre = Preprocessing((32, 32))
    decoded = DecodeStage(opts, str(tmp_path / "out"), "jpeg", pre)(batch)
    decoded["ab"] = np.random.default_rng(1).normal(0, 10, (5, 2, 32, 32)).astype(np.float32)
    del decoded["l"]
    rows = ComposeStage(opts, str(tmp_path / "out"), pre, model_name="m")(decoded)
    assert list(rows["status"]) == ["ok", "ok", "error", "error", "error"]
    written = jobkit.decode(output_key(str(tmp_path / "out"), "c_jpg", "jpeg"))
    source = jobkit.decode(batch["uri"][0])
    assert written.shape == source.shape
    assert rows["psnr"][0] == pytest.approx(metrics.psnr(written, source), abs=1e-9)
    assert rows["metrics_against"][0] == "input" and rows["metrics_against"][1] is None
    assert np.isnan(rows["psnr"][1]) and rows["colorfulness"][1] > 0
    assert np.isnan(rows["psnr"][2]) and rows["width"][2] == -1
    # A gray source has no reference: its colourfulness is of the pixels encoded, not of the file decoded again.
    gray = imageio.decode_image(storage.read_bytes(batch["uri"][1], opts)).pixels
    encoded = render.compose(gray, decoded["ab"][1], pre)
    assert rows["colorfulness"][1] == pytest.approx(metrics.colorfulness(encoded, COLORFULNESS_STEP), abs=1e-12)
    assert rows["colorfulness"][1] != pytest.approx(metrics.colorfulness(
        jobkit.decode(output_key(str(tmp_path / "out"), "g_png", "jpeg"))), abs=1e-9)


def test_stages_pickle_round_trip(tmp_path):
    opts = storage.StorageOptions(endpoint_url="http://127.0.0.1:1", key="k", secret="s")
    for stage in (DecodeStage(opts, "s3://b/o", "png", Preprocessing((256, 256)), True),
                  ComposeStage(opts, "s3://b/o", Preprocessing((256, 256), ab_upsample="bicubic"), "png"),
                  InferenceStage("siggraph17", "official", options=opts)):
        assert pickle.loads(pickle.dumps(stage)) == stage



def test_only_input_failures_are_rows_an_output_failure_raises(inputs):
    """A missing or wrong-sized reference and a bad hint are rows; an output that cannot be written is not."""
    from colorize_core.errors import OutputError

    batch, tmp_path = inputs
    opts, out = storage.StorageOptions(), str(tmp_path / "out")
    pre = Preprocessing((32, 32))
    hints = _obj([[{"x": 2.0, "y": 0.5, "a": 1.0, "b": 1.0}], None, None, None, None])
    decoded = DecodeStage(opts, out, "jpeg", pre, accepts_hints=True)({**batch, "hints": hints})
    assert decoded["status"][0] == "error" and "bad hint" in decoded["error"][0]
    decoded["status"][0], decoded["error"][0] = "ok", None  # the colour image, composed below
    decoded["ab"] = np.zeros((5, 2, 32, 32), np.float32)
    decoded["reference_uri"] = _obj([batch["uri"][1], str(tmp_path / "nope.png"), None, None, None])
    rows = ComposeStage(opts, out, pre, model_name="m")(decoded)
    assert list(rows["status"]) == ["error", "error", "error", "error", "error"]
    assert rows["error"][0].startswith("reference is 50x40") and rows["error"][1].startswith("missing object")
    # Now the output's images/ is a file: the first good row raises, naming the target and what to do.
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / "images").write_text("in the way")
    decoded["reference_uri"] = _obj([None] * 5)
    with pytest.raises(OutputError, match=r"cannot write .*c_jpg\.jpg: '.*images' is a file where a folder is "
                                          r"needed; move it away and rerun the same command"):
        ComposeStage(opts, str(tmp_path / "out2"), pre, model_name="m")(decoded)


def test_a_source_of_a_scheme_we_do_not_read_is_that_rows_error(tmp_path):
    batch = {"image_id": _obj(["a"]), "uri": _obj(["gs://bucket/a.jpg"]), "shard_id": _obj(["s0"])}
    out = DecodeStage(storage.StorageOptions(), str(tmp_path / "out"), "jpeg", Preprocessing((8, 8)))(batch)
    assert out["status"][0] == "error" and "unsupported URI scheme" in out["error"][0]


def test_compose_stage_on_a_device_scores_as_the_host_path(inputs):
    """device='cpu' runs the GPU actor's code (compose and scores in torch) here: the same rows, within the
    difference of the two Lab -> sRGB kernels (pow vs table)."""
    batch, tmp_path = inputs
    opts = storage.StorageOptions()
    pre = Preprocessing((32, 32))
    decoded = DecodeStage(opts, str(tmp_path / "out"), "jpeg", pre, keep_source=True)(batch)
    assert isinstance(decoded["source"][0], bytes) and decoded["source"][4] is None  # the missing one
    decoded["ab"] = np.random.default_rng(1).normal(0, 10, (5, 2, 32, 32)).astype(np.float32)
    host = ComposeStage(opts, str(tmp_path / "host"), pre, model_name="m")(decoded)
    device = ComposeStage(opts, str(tmp_path / "device"), pre, model_name="m", device="cpu")(decoded)
    assert list(device["status"]) == list(host["status"]) == ["ok", "ok", "error", "error", "error"]
    for name in ("psnr", "ssim", "colorfulness"):
        np.testing.assert_allclose(device[name][:2], host[name][:2], rtol=0.02, err_msg=name)
