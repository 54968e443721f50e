"""colorize_core.train (python -m jobs.train): every shipped config loads; a 2-worker TorchTrainer run on the session cluster writes the
documented layout, and the same command with a larger step budget resumes from the saved step."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from colorize_core.errors import UserError
from colorize_core.config import load_yaml
from colorize_core.models import load_model
from colorize_core.models.checkpoint import load_train_state, read_checkpoint_meta
from colorize_core.train import TrainConfig, main, step_dir
from tests.test_training import make_images

CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/train-*.yaml"))


def test_every_train_config_loads():
    names = {p.stem.removeprefix("train-") for p in CONFIGS}
    assert {"unet", "pix2pix", "vgg_autoencoder", "compact", "effnet_unet"} <= names
    expected_loss = {"pix2pix": "gan", "effnet_unet": "l1_rebalanced"}
    for path in CONFIGS:
        cfg = TrainConfig.model_validate(load_yaml(path))
        assert cfg.architecture == path.stem.removeprefix("train-")
        assert cfg.resolved_loss() == expected_loss.get(cfg.architecture, "l1")
        assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_config_rejects_typos_and_masks_secrets():
    base = {"architecture": "unet", "train_manifest": "m.parquet", "output": "out"}
    with pytest.raises(ValidationError, match="batchsize"):
        TrainConfig.model_validate({**base, "batchsize": 4})
    cfg = TrainConfig.model_validate({**base, "storage": {"secret_access_key": "hunter2"}})
    assert "hunter2" not in json.dumps(cfg.resolved())
    assert cfg.resolved()["crop_size"] == 256
    assert all(f.description for n, f in TrainConfig.model_fields.items() if n != "storage")


def test_cosine_learning_rate_is_a_pure_function_of_the_step():
    base = {"architecture": "unet", "train_manifest": "m.parquet", "output": "out", "lr": 1e-3}
    assert TrainConfig.model_validate(base).lr_at(500, 1000) == 1e-3  # constant by default
    cfg = TrainConfig.model_validate({**base, "lr_schedule": "cosine", "lr_decay_from": 100, "lr_min": 1e-5})
    lrs = [cfg.lr_at(step, 1100) for step in range(1100)]
    assert lrs[0] == lrs[100] == 1e-3  # an earlier phase's steps keep the full rate
    assert lrs[-1] == pytest.approx(1e-5) and abs(lrs[600] - (1e-3 + 1e-5) / 2) < 2e-6
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))
    with pytest.raises(ValidationError, match="lr_schedule"):
        TrainConfig.model_validate({**base, "lr_schedule": "step"})


def test_init_weights_copies_what_matches_and_leaves_a_new_head_fresh(tmp_path):
    import torch

    from colorize_core.models.checkpoint import save_checkpoint
    from colorize_core.models.effnet_unet import EffNetUNetColorizer
    from colorize_core.train import build_model, init_from

    torch.manual_seed(0)
    deep = EffNetUNetColorizer(decoder_channels=[24, 16, 16, 8])
    uri = str(tmp_path / "deep")
    save_checkpoint(uri, deep, architecture="effnet_unet", arguments={"decoder_channels": [24, 16, 16, 8]},
                    input_size=(64, 64))
    cfg = TrainConfig.model_validate({"architecture": "effnet_unet", "arguments": {"decoder_channels": [24, 16]},
                                      "train_manifest": "m.parquet", "output": "out", "init_weights": uri,
                                      "freeze_encoder": True})
    torch.manual_seed(1)
    model = build_model(cfg)  # stride 8: its decoder's first two merges and the encoder come from `deep`
    theirs = deep.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith(("encoder.", "decoder.0.", "decoder.1.")):
            assert torch.equal(value, theirs[key]), key
    torch.manual_seed(1)
    reference = EffNetUNetColorizer(decoder_channels=[24, 16])  # the same draws, nothing copied in
    for key, value in model.head.state_dict().items():  # the new head: as initialised where shapes differ
        source = deep.head if value.shape == deep.head.state_dict()[key].shape else reference.head
        assert torch.equal(value, source.state_dict()[key]), key
    assert model.head[0][0].weight.shape != deep.head[0][0].weight.shape  # so some of it stayed fresh
    assert model.encoder_frozen
    _, fresh = init_from(EffNetUNetColorizer(decoder_channels=[24, 16]), uri)
    assert fresh and all(k.startswith("head.") for k in fresh)
    compact = tmp_path / "compact"
    from colorize_core.models.unet import CompactColorizer

    save_checkpoint(str(compact), CompactColorizer(), architecture="compact", arguments={}, input_size=(64, 64))
    with pytest.raises(UserError, match="no weight matches"):
        init_from(EffNetUNetColorizer(), str(compact))


def test_two_worker_training_resumes_from_the_saved_step(ray_cluster, tmp_path):
    manifest = make_images(tmp_path, n=4)
    out = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "architecture": "unet", "arguments": {"base_channels": 4, "depth": 2},
        "train_manifest": manifest, "val_manifest": manifest, "output": str(out),
        "epochs": 3, "steps_per_epoch": 2, "batch_size": 2, "crop_size": 32, "lr": 0.001,
        "num_workers": 2, "use_gpu": False, "seed": 0,
    }))
    assert main(["--config", str(config), "--set", "max_steps=2"]) == 0
    first = out / step_dir(2)
    assert (out / "latest").read_text() == step_dir(2)
    assert {p.name for p in first.iterdir()} == {"model.json", "weights.pt", "train_state.pt"}
    stamp = (first / "weights.pt").stat().st_mtime_ns

    assert main(["--config", str(config), "--set", "max_steps=4", "--set", "lr=0.0005"]) == 0
    assert (out / "latest").read_text() == step_dir(4)
    state = load_train_state(str(out / step_dir(4)))
    assert state["step"] == 4 and state["optimizer"]["param_groups"][0]["lr"] == 0.0005  # config lr wins
    assert (first / "weights.pt").stat().st_mtime_ns == stamp  # not retrained from scratch
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4] and all(float(r["val_psnr"]) > 0 for r in rows)
    meta = read_checkpoint_meta(str(out / step_dir(4)))
    assert meta["architecture"] == "unet" and meta["step"] == 4 and meta["epoch"] == 2
    assert meta["data"]["train_manifest"] == manifest and "val_ssim" in meta["metrics"]
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["num_workers"] == 2 and resolved["loss"] == "l1" and resolved["use_gpu"] is False
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    model, info = load_model(str(out / step_dir(4)))
    assert info.name == "unet" and info.num_params == sum(p.numel() for p in model.parameters())
    # The size it was trained at (crop_size), not the registry's 256: inference feeds it as trained.
    assert meta["preprocessing"]["input_size"] == [32, 32] and info.input_size == (32, 32)

    # Budget already met: a third run trains nothing and leaves the checkpoints alone.
    assert main(["--config", str(config), "--set", "max_steps=4"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000004"]


def test_checkpoints_to_s3_load_in_the_colorize_path(ray_cluster, s3_server, s3_prefix, tmp_path):
    """Training output on the real S3 server: checkpoint + latest pointer + curves, and the checkpoint
    loads by its s3:// URI as a model, credentials coming from the config alone."""
    from colorize_core import storage

    manifest = make_images(tmp_path, n=3)
    out = storage.join(s3_prefix, "train")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "architecture": "unet", "arguments": {"base_channels": 4, "depth": 2},
        "train_manifest": manifest, "val_manifest": manifest, "output": out,
        "epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "crop_size": 32,
        "num_workers": 1, "use_gpu": False, "seed": 0,
        "storage": {"endpoint_url": s3_server.endpoint_url, "region": s3_server.region,
                    "access_key_id": s3_server.key, "secret_access_key": s3_server.secret},
    }))
    assert main(["--config", str(config)]) == 0
    opts = s3_server.options
    latest = storage.read_bytes(storage.join(out, "latest"), opts).decode()
    assert latest == step_dir(2)
    assert storage.read_bytes(storage.join(out, "curves.png"), opts)[:4] == b"\x89PNG"
    written = storage.read_bytes(storage.join(out, "config.json"), opts).decode()
    assert s3_server.secret not in written and s3_server.key not in written
    model, info = load_model(storage.join(out, latest), storage_options=opts)
    assert info.name == "unet" and info.num_params == sum(p.numel() for p in model.parameters())
