"""Every user mistake ends with exit status 1 and ONE line, ``error: <what> ... <what to do>``, no traceback."""

from __future__ import annotations

import pytest
import yaml

from colorize_core import cli
from jobs import colorize as job


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def images(tmp_path):
    from tests import jobkit

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jobkit.colour_images(1)[0])
    (tmp_path / "a_file").write_text("not a folder")
    return folder


@pytest.mark.parametrize("argv, expected", [
    (["image", "{in}/a.jpg", "-o", "{tmp}/o.jpg", "--model", "nosuch"],
     "error: unknown model 'nosuch': use one of compact, eccv16, effnet_guided, effnet_unet, pix2pix, siggraph17, unet, vgg_autoencoder "
     "(see `colorize models`), or a checkpoint directory URI"),
    (["folder", "{in}", "-o", "{tmp}/a_file"],
     "error: -o {tmp}/a_file is a file: `colorize folder` writes one sub-folder per model there; give a folder "
     "(it is created if missing)"),
    (["image", "{in}", "-o", "{tmp}/o.jpg"], "error: {in} is a folder: use `colorize folder {in} -o OUT_DIR`"),
    (["folder", "{in}/a.jpg", "-o", "{tmp}/out"],
     "error: {in}/a.jpg is not a folder: give a folder of images, or use `colorize image` for one file"),
    (["image", "{in}/a.jpg", "-o", "{tmp}/o.jpg", "--model", "unet"],
     "error: model 'unet' has no released weights: train one (python -m jobs.train --model unet ...) and pass "
     "its checkpoint directory as --model, or pass --weights PATH"),
    (["image", "{in}/missing.jpg", "-o", "{tmp}/o.jpg"], "error: {in}/missing.jpg: no such file or folder"),
    (["folder", "{in}", "-o", "{tmp}/out", "--model", "compact,effnet_unet", "--weights", "compact=x,broken"],
     "error: --weights 'compact=x,broken': give name=URI pairs separated by commas (e.g. "
     "eccv16=official,ours=s3://bucket/w.pth)"),
])
def test_cli_mistakes(images, tmp_path, capsys, argv, expected):
    fill = {"in": str(images), "tmp": str(tmp_path)}
    assert cli.main([a.format(**fill) for a in argv]) == 1
    assert _one_error_line(capsys) == expected.format(**fill)


@pytest.mark.parametrize("argv, config, expected", [
    (["--model", "nosuch"], None, "error: unknown model 'nosuch': use one of compact, eccv16, effnet_guided, effnet_unet, pix2pix, siggraph17, "
     "unet, vgg_autoencoder (see `colorize models`), or a checkpoint directory URI"),
    (["--model", "unet"], None, "error: model 'unet' has no released weights: train one (python -m jobs.train "
     "--model unet ...) and pass its checkpoint directory as --model, or pass --weights PATH"),
    ([], {"outptu": "x"}, "error: {config}: unknown key 'outptu' (did you mean 'output'?)"),
    ([], {"inference": {"batch_sise": 4}},
     "error: {config}: unknown key 'inference.batch_sise' (did you mean 'inference.batch_size'?)"),
    ([], {"quality": 500}, "error: {config}: 'quality' = 500: Input should be less than or equal to 100"),
    (["--output", "{tmp}/run*"], None, "error: 'output': '{tmp}/run*' contains a glob character (* ? [), which "
     "--overwrite must never expand: pick an output path without them"),
    (["--config", "{tmp}/nope.yaml"], None, "error: config file {tmp}/nope.yaml not found: check the --config path"),
    ([], ["model: compact"], "error: {config}: expected a mapping of config keys, got list"),
])
def test_job_mistakes(tmp_path, capsys, argv, config, expected):
    fill = {"tmp": str(tmp_path), "config": str(tmp_path / "c.yaml")}
    args = [a.format(**fill) for a in argv]
    if config is not None:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        args += ["--config", fill["config"]]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out")]
    assert job.main([*args, "--quiet"]) == job.EXIT_FAILED
    assert _one_error_line(capsys) == expected.format(**fill)


@pytest.mark.integration
def test_job_with_wrong_credentials_says_access_denied(s3_server, s3_prefix, tmp_path, capsys):
    if s3_server.kind == "moto":
        pytest.skip("moto accepts any credentials")
    from tests import jobkit

    manifest = jobkit.write_manifest(s3_prefix + "m.parquet", [{"image_id": "a", "uri": s3_prefix + "a.jpg"}],
                                     s3_server.options)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"storage": {
        "endpoint_url": s3_server.endpoint_url, "region": s3_server.region, "access_key_id": s3_server.key,
        "secret_access_key": "wrong-secret"}}))
    code = job.main(["--config", str(tmp_path / "c.yaml"), "--manifest", manifest, "--output", s3_prefix + "out",
                     "--quiet"])
    assert code == job.EXIT_FAILED
    line = _one_error_line(capsys)
    assert line == (f"error: access denied to {manifest}: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the "
                    f"storage section of the config) and that they may read and write there"), line
    assert "wrong-secret" not in line


def test_evaluate_without_models_names_the_flag(tmp_path, capsys):
    from colorize_core import evaluate

    assert evaluate.main(["--manifest", "m.parquet", "--output", str(tmp_path / "o"), "--quiet"]) == 1
    assert _one_error_line(capsys) == "error: missing required setting 'models': give --models or set it in the " \
                                      "config file"


@pytest.mark.parametrize("config, argv, expected", [
    ({"architecture": "unet", "train_manifest": "{tmp}/manifest.parquet", "output": "{tmp}/o", "batchsize": 4}, [],
     "error: {tmp}/train.yaml: unknown key 'batchsize' (did you mean 'batch_size'?)"),
    ({"architecture": "nosuch", "train_manifest": "{tmp}/manifest.parquet", "output": "{tmp}/o"}, [],
     "error: unknown model 'nosuch'"),
    ({"architecture": "unet", "train_manifest": "{tmp}/missing.parquet", "output": "{tmp}/o"}, [],
     "error: train_manifest {tmp}/missing.parquet not found: give a Parquet manifest"),
    ({"architecture": "unet", "train_manifest": "{tmp}/manifest.parquet", "output": "{tmp}/o"}, ["--set", "max_steps"],
     "error: --set 'max_steps' is not KEY=VALUE (e.g. --set max_steps=100)"),
    ({"architecture": "unet", "train_manifest": "{tmp}/manifest.parquet", "output": "{tmp}/o",
      "arguments": {"widths": [4]}}, [], "error: arguments of 'unet': "),
])
def test_train_mistakes_are_one_line_before_any_worker_starts(tmp_path, capsys, config, argv, expected):
    """The train job starts like the others: config checked (unknown keys refused), the architecture, its
    arguments and the manifests checked on the driver, one line and exit 1 (no Ray Train worker traceback)."""
    from colorize_core import train
    from tests.test_training import make_images

    make_images(tmp_path, n=1)  # {tmp}/manifest.parquet
    path = tmp_path / "train.yaml"
    fill = {"{tmp}": str(tmp_path)}

    def sub(value):
        if isinstance(value, str):
            for k, v in fill.items():
                value = value.replace(k, v)
        return value

    path.write_text(yaml.safe_dump({k: sub(v) for k, v in config.items()}))
    assert train.main(["--config", str(path), *argv]) == 1
    assert _one_error_line(capsys).startswith(sub(expected))
