"""The typed job config, the colorize job's flags on top of YAML, and resource planning (no cluster).

Configs travel to Ray workers and are written beside outputs, so they must pickle and must never leak
credentials; YAML typos must fail before a run starts.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from colorize_core.config import ColorizeConfig, InferenceConfig, StorageConfig, load_yaml, merge
from colorize_core.errors import UserError
from colorize_core.models.registry import DEFAULT_MODEL
from colorize_core.ray_adapter import plan_resources
from colorize_core.storage import StorageOptions
from jobs.colorize import build_parser, config_from_args

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYzz-secret"
KEY = "AKIAEXAMPLEKEY0001"
AWS_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def minimal(**kw) -> ColorizeConfig:
    return ColorizeConfig(manifest="m.parquet", output="out", **kw)


def from_flags(*argv: str) -> ColorizeConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


@pytest.fixture
def no_aws_env(monkeypatch):
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ---------------------------------------------------------------------------------------------- the model


def test_unknown_keys_are_rejected_at_top_level_and_nested():
    with pytest.raises(ValidationError, match="outptu"):
        ColorizeConfig(manifest="m", output="o", outptu="x")
    with pytest.raises(ValidationError, match="batch_sise"):
        ColorizeConfig(manifest="m", output="o", inference={"batch_sise": 3})
    with pytest.raises(ValidationError, match="endpoint"):
        ColorizeConfig(manifest="m", output="o", storage={"endpoint": "http://x"})
    with pytest.raises(ValidationError):
        minimal().inference.batch_sise = 3  # validate_assignment also guards attribute typos


def test_unknown_yaml_key_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("manifest: m\ninference:\n  batch_sise: 3\n")
    with pytest.raises(UserError) as info:
        from_flags("--config", str(path))
    assert str(info.value) == f"{path}: unknown key 'inference.batch_sise' (did you mean 'inference.batch_size'?)"


@pytest.mark.parametrize("given, expected", [("jpg", "jpeg"), ("JPG", "jpeg"), ("jpeg", "jpeg"), ("PNG", "png"),
                                             ("webp", "webp")])
def test_output_format_is_normalised(given, expected):
    assert minimal(output_format=given).output_format == expected


def test_output_format_rejects_unknown():
    with pytest.raises(ValidationError):
        minimal(output_format="gif")


@pytest.mark.parametrize("field, value", [("quality", 0), ("quality", 101), ("shard_rows", 0), ("limit", 0),
                                          ("max_error_fraction", 1.5), ("temperature", 0)])
def test_out_of_range_values_are_rejected(field, value):
    with pytest.raises(ValidationError, match=field):
        minimal(**{field: value})


def test_defaults():
    cfg = minimal()
    assert cfg.model == DEFAULT_MODEL
    assert cfg.output_format == "jpeg"
    assert cfg.weights is None
    assert cfg.inference == InferenceConfig()
    assert cfg.inference.device == "auto" and cfg.inference.batch_size == 16
    assert cfg.storage == StorageConfig()


def test_manifest_and_output_are_required():
    with pytest.raises(ValidationError, match="manifest"):
        ColorizeConfig(output="o")
    with pytest.raises(ValidationError, match="output"):
        ColorizeConfig(manifest="m")


def test_merge_ignores_none_and_merges_nested():
    base = {"model": "eccv16", "inference": {"batch_size": 4, "precision": "fp32"}, "quality": 80}
    out = merge(base, {"model": None, "quality": 90, "inference": {"batch_size": 7, "precision": None}})
    assert out == {"model": "eccv16", "inference": {"batch_size": 7, "precision": "fp32"}, "quality": 90}
    assert base["inference"] == {"batch_size": 4, "precision": "fp32"}  # inputs are not modified
    assert merge({}, {"inference": {"batch_size": None}}) == {}


def test_load_yaml_rejects_non_mapping(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(UserError, match="mapping"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}


# ---------------------------------------------------------------------------------------------- flags and YAML


def test_no_flags_gives_the_sample_run():
    cfg = from_flags()
    assert cfg.manifest == "samples"
    assert cfg.output == "out/colorize"
    assert cfg.model == DEFAULT_MODEL
    assert cfg.overwrite is False


def test_flags_map_onto_the_config():
    cfg = from_flags("--manifest", "s3://b/m/", "--output", "s3://b/o", "--model", "siggraph17", "--weights",
                     "official", "--output-format", "jpg", "--quality", "80", "--shard-rows", "50", "--limit",
                     "7", "--overwrite", "--batch-size", "32", "--num-actors", "3", "--precision", "bf16",
                     "--device", "cpu", "--temperature", "0.38", "--max-error-fraction", "0.1")
    assert (cfg.manifest, cfg.output, cfg.model, cfg.weights) == ("s3://b/m/", "s3://b/o", "siggraph17", "official")
    assert (cfg.output_format, cfg.quality, cfg.shard_rows, cfg.limit, cfg.overwrite) == ("jpeg", 80, 50, 7, True)
    assert cfg.inference.batch_size == 32 and cfg.inference.num_actors == 3
    assert cfg.inference.precision == "bf16" and cfg.inference.device == "cpu"
    assert cfg.temperature == 0.38 and cfg.max_error_fraction == 0.1


def test_yaml_and_flags_merge_flag_wins(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "manifest": "s3://b/manifest.parquet", "output": "s3://b/run", "model": "eccv16", "quality": 70,
        "overwrite": True,
        "inference": {"batch_size": 4, "precision": "fp32", "num_actors": 2},
        "cpu": {"batch_size": 3},
        "storage": {"endpoint_url": "http://127.0.0.1:8333"},
    }))
    cfg = from_flags("--config", str(path), "--model", "siggraph17", "--batch-size", "64")
    assert cfg.model == "siggraph17"                # flag wins
    assert cfg.inference.batch_size == 64           # nested, from --batch-size
    # Flags not given leave the YAML alone, including siblings of a nested flag.
    assert cfg.inference.precision == "fp32" and cfg.inference.num_actors == 2
    assert cfg.manifest == "s3://b/manifest.parquet" and cfg.output == "s3://b/run"
    assert cfg.quality == 70 and cfg.overwrite is True
    assert cfg.cpu.batch_size == 3
    assert cfg.storage.endpoint_url == "http://127.0.0.1:8333"


def test_yaml_without_manifest_or_output_gets_the_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: eccv16\n")
    cfg = from_flags("--config", str(path))
    assert (cfg.manifest, cfg.output, cfg.model) == ("samples", "out/colorize", "eccv16")


# ---------------------------------------------------------------------------------------------- secrets


def secret_config(**kw) -> ColorizeConfig:
    return minimal(storage={"endpoint_url": "http://s3.local", "access_key_id": KEY, "secret_access_key": SECRET},
                   **kw)


def test_resolved_hides_credentials():
    cfg = secret_config()
    data = cfg.resolved()
    assert data["storage"]["access_key_id"] == "***"
    assert data["storage"]["secret_access_key"] == "***"
    assert data["storage"]["endpoint_url"] == "http://s3.local"
    text = json.dumps(data)
    assert SECRET not in text and KEY not in text
    assert SECRET not in repr(cfg) and KEY not in repr(cfg)
    assert SECRET not in str(cfg) and SECRET not in repr(cfg.storage)
    assert SECRET not in repr(cfg.storage.options())
    # ... while the value itself is still there for the storage layer.
    assert cfg.storage.secret_access_key.get_secret_value() == SECRET


def test_resolved_without_credentials_is_json_and_complete():
    data = minimal(output_format="jpg").resolved()
    assert data["storage"]["access_key_id"] is None and data["storage"]["secret_access_key"] is None
    assert ColorizeConfig(**{**data, "storage": {k: v for k, v in data["storage"].items() if v is not None}}) \
        == minimal(output_format="jpeg")
    json.dumps(data)


def test_storage_options_come_from_the_environment(no_aws_env):
    no_aws_env.setenv("AWS_ENDPOINT_URL", "http://env-endpoint:9000")
    no_aws_env.setenv("AWS_REGION", "eu-west-3")
    no_aws_env.setenv("AWS_ACCESS_KEY_ID", "env-key")
    no_aws_env.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    assert StorageConfig().options() == StorageOptions(endpoint_url="http://env-endpoint:9000", region="eu-west-3",
                                                       key="env-key", secret="env-secret")


def test_storage_config_overrides_the_environment(no_aws_env):
    no_aws_env.setenv("AWS_ENDPOINT_URL", "http://env-endpoint:9000")
    no_aws_env.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    no_aws_env.setenv("AWS_ACCESS_KEY_ID", "env-key")
    no_aws_env.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    opts = StorageConfig(endpoint_url="http://cfg:8333", access_key_id="cfg-key").options()
    assert opts.endpoint_url == "http://cfg:8333"
    assert opts.key == "cfg-key"
    assert opts.region == "eu-west-3"       # not set in the config: the environment's
    assert opts.secret == "env-secret"


def test_storage_options_without_anything_set(no_aws_env):
    assert StorageConfig().options() == StorageOptions()


# ---------------------------------------------------------------------------------------------- pickling


def test_configs_pickle_round_trip():
    cfg = secret_config(model="siggraph17", output_format="png", limit=5,
                        inference={"batch_size": 3, "device": "cpu"}, cpu={"concurrency": 2})
    back = pickle.loads(pickle.dumps(cfg))
    assert back == cfg
    assert back.storage.secret_access_key.get_secret_value() == SECRET
    for part in (cfg.inference, cfg.cpu, cfg.storage, cfg.storage.options()):
        assert pickle.loads(pickle.dumps(part)) == part


# ---------------------------------------------------------------------------------------------- shipped configs


def colorize_yamls() -> list[Path]:
    return sorted(CONFIGS.glob("colorize*.yaml")) + sorted(CONFIGS.glob("colorize*.yml"))


def test_shipped_colorize_configs_exist():
    names = {p.name for p in colorize_yamls()}
    assert {"colorize-example.yaml", "colorize-local.yaml"} <= names


@pytest.mark.parametrize("path", colorize_yamls(), ids=lambda p: p.name)
def test_shipped_colorize_config_loads(path):
    data = load_yaml(path)
    cfg = ColorizeConfig(**{"manifest": "samples", "output": "out/x", **data})
    assert cfg.model
    # And through the job's own flag handling, as `python -m jobs.colorize --config` does.
    via_flags = from_flags("--config", str(path))
    assert via_flags.model == cfg.model and via_flags.inference == cfg.inference
    assert pickle.loads(pickle.dumps(via_flags)) == via_flags


def test_example_config_targets_object_storage_without_credentials():
    data = load_yaml(CONFIGS / "colorize-example.yaml")
    assert data["manifest"].startswith("s3://") and data["output"].startswith("s3://")
    assert not {"access_key_id", "secret_access_key"} & set(data.get("storage") or {})


# ---------------------------------------------------------------------------------------------- plan_resources


def test_gpu_cluster_gets_one_actor_per_gpu():
    res = plan_resources(minimal(), cluster={"CPU": 32, "GPU": 4})
    assert res.device == "cuda"
    assert res.num_actors == 4
    assert res.gpus_per_actor == 1.0
    assert res.cpus_per_actor == 1


def test_small_cpu_cluster_never_oversubscribes_and_follows_the_measured_share():
    res = plan_resources(minimal(), cluster={"CPU": 2})
    assert (res.device, res.num_actors, res.cpus_per_actor, res.gpus_per_actor, res.threads) == ("cpu", 1, 1, 0.0, 1)
    assert res.cpus_per_task == 1 and res.max_actors == 1
    heavy = plan_resources(minimal(), cluster={"CPU": 2}, inference_share=0.95)  # eccv16: forward-bound
    assert heavy.threads == 2 and heavy.cpus_per_actor == pytest.approx(1.9) and heavy.cpus_per_task <= 0.1 + 1e-9


def test_a_light_replica_holds_a_fraction_of_a_cpu():
    light = plan_resources(minimal(), cluster={"CPU": 4}, inference_share=0.05)  # compact: ~4% forward
    assert light.cpus_per_actor == pytest.approx(0.25) and light.threads == 1 and light.cpus_per_task == 1
    assert not light.fused


def test_the_colorize_job_fuses_its_stages_on_cpu_only_clusters_unless_told_not_to():
    res = plan_resources(minimal(), cluster={"CPU": 4}, inference_share=0.9, fusable=True)
    assert res.fused and res.device == "cpu" and (res.num_actors, res.threads, res.max_actors) == (4, 1, 4)
    assert res.num_actors * res.cpus_per_actor <= 4  # no task runs beside them: they expand their own pieces
    assert not plan_resources(minimal(), cluster={"CPU": 16, "GPU": 2}, fusable=True).fused  # GPUs: split
    assert not plan_resources(minimal(), cluster={"CPU": 4}, pools=2).fused  # evaluation: a pool per model
    split = plan_resources(minimal(inference={"layout": "split"}), cluster={"CPU": 4}, fusable=True)
    assert not split.fused and split.num_actors == 1
    two = plan_resources(minimal(inference={"layout": "fused", "num_actors": 2, "threads": 2}), cluster={"CPU": 8},
                         fusable=True)
    assert two.fused and (two.num_actors, two.threads) == (2, 2)
    with pytest.raises(ValueError):
        minimal(inference={"layout": "joined"})


def test_large_cpu_cluster_gets_one_actor_per_16_cpus_with_half_the_cpus():
    res = plan_resources(minimal(), cluster={"CPU": 64})
    assert res.device == "cpu"
    assert res.num_actors == 4
    assert res.num_actors * res.cpus_per_actor <= 32
    assert res.threads == round(res.cpus_per_actor) == 8


def test_explicit_settings_are_respected():
    cfg = minimal(inference={"num_actors": 3, "cpus_per_actor": 2, "threads": 5}, cpu={"concurrency": 4})
    res = plan_resources(cfg, cluster={"CPU": 16})
    assert (res.num_actors, res.cpus_per_actor, res.threads, res.cpu_concurrency) == (3, 2, 5, 4)
    gpu = plan_resources(minimal(inference={"num_actors": 2}), cluster={"CPU": 16, "GPU": 8})
    assert gpu.num_actors == 2 and gpu.device == "cuda" and gpu.max_actors is None  # grows with the cluster
    cpu_on_gpu = plan_resources(minimal(inference={"device": "cpu"}), cluster={"CPU": 64, "GPU": 8})
    assert cpu_on_gpu.device == "cpu" and cpu_on_gpu.gpus_per_actor == 0.0


@pytest.mark.parametrize("inference, cpus", [({"num_actors": 4, "cpus_per_actor": 4}, 16),
                                             ({"num_actors": 2, "cpus_per_actor": 1}, 2), ({}, 1)])
def test_no_cpu_left_for_cpu_stages_raises(inference, cpus):
    with pytest.raises(RuntimeError, match="leave no CPU"):
        plan_resources(minimal(inference=inference), cluster={"CPU": cpus})


def test_cuda_on_a_cpu_only_cluster_raises():
    with pytest.raises(RuntimeError, match="no GPU"):
        plan_resources(minimal(inference={"device": "cuda"}), cluster={"CPU": 64})


def test_cluster_manifests_parse_and_run_the_job():
    import yaml

    root = Path(__file__).resolve().parents[1] / "cluster"
    launcher = yaml.safe_load((root / "ray-cluster-aws.yaml").read_text())
    assert {"head", "cpu_worker", "gpu_worker"} <= set(launcher["available_node_types"])
    rayjob = yaml.safe_load((root / "kuberay-rayjob.yaml").read_text())
    assert rayjob["kind"] == "RayJob" and "jobs.colorize" in rayjob["spec"]["entrypoint"]
    config = rayjob["spec"]["entrypoint"].split("--config ")[1].split()[0].removeprefix("/app/")
    assert (root.parent / config).is_file()
