"""cluster/: every manifest parses, has its required fields, turns token authentication on, and names job
entry points and configs that exist and load."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from colorize_core.backfill import BackfillConfig
from colorize_core.config import ColorizeConfig, load_yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
CONFIG_CLASSES = {"jobs.colorize": ColorizeConfig, "jobs.backfill": BackfillConfig}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _check_entrypoint(entrypoint: str) -> None:
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"], entrypoint
    module = argv[2]
    assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{module} does not exist"
    config = argv[argv.index("--config") + 1].removeprefix("/app/")
    assert (REPO / config).is_file(), f"{config} does not exist"
    data = load_yaml(REPO / config)
    CONFIG_CLASSES[module](**{"manifest": "samples", **data}) if module == "jobs.colorize" else \
        CONFIG_CLASSES[module](**data)


def _check_rayjob_spec(spec: dict) -> None:
    assert spec["entrypoint"] and spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}, "token authentication must be on"
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert {"cpu", "gpu"} <= set(groups)
    assert groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    assert cluster.get("enableInTreeAutoscaling") is True
    # The head service is never exposed outside the Kubernetes cluster.
    assert cluster["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    _check_entrypoint(spec["entrypoint"])


def test_every_cluster_file_is_known_and_parses():
    names = {p.name for p in CLUSTER.iterdir()}
    assert {"ray-cluster-aws.yaml", "kuberay-rayjob.yaml", "kuberay-raycronjob.yaml", "k8s-cronjob-backfill.yaml",
            "Dockerfile", "README.md"} <= names
    for path in CLUSTER.glob("*.yaml"):
        assert _docs(path), path


def test_aws_launcher_has_three_node_types_spot_workers_and_token_auth():
    cfg = _docs(CLUSTER / "ray-cluster-aws.yaml")[0]
    for key in ("cluster_name", "provider", "auth", "available_node_types", "head_node_type"):
        assert key in cfg
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head" and {"head", "cpu_worker", "gpu_worker"} <= set(types)
    assert types["head"]["resources"] == {"CPU": 0}
    for worker in ("cpu_worker", "gpu_worker"):
        assert types[worker]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        assert types[worker]["min_workers"] < types[worker]["max_workers"]
    head = " ".join(cfg["head_start_ray_commands"])
    workers = " ".join(cfg["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head and "RAY_AUTH_MODE=token ray start" in workers
    assert "--dashboard-host=127.0.0.1" in head, "the dashboard (job submission) must not listen on 0.0.0.0"
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    submit = re.search(r"python -m (jobs\.\w+) --config (\S+)", (CLUSTER / "ray-cluster-aws.yaml").read_text())
    _check_entrypoint(f"python -m {submit.group(1)} --config {submit.group(2)}")


def test_rayjob_runs_the_colorize_job_with_token_auth():
    (job,) = _docs(CLUSTER / "kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    _check_rayjob_spec(job["spec"])
    assert "jobs.colorize" in job["spec"]["entrypoint"]


def test_raycronjob_schedules_the_backfill():
    (cron,) = _docs(CLUSTER / "kuberay-raycronjob.yaml")
    assert cron["kind"] == "RayCronJob" and len(cron["spec"]["schedule"].split()) == 5
    _check_rayjob_spec(cron["spec"]["jobTemplate"])
    assert "jobs.backfill" in cron["spec"]["jobTemplate"]["entrypoint"]
    assert "--wait" not in cron["spec"]["jobTemplate"]["entrypoint"]


def test_kubernetes_cronjob_fallback_submits_a_backfill_rayjob():
    docs = {d["kind"]: d for d in _docs(CLUSTER / "k8s-cronjob-backfill.yaml")}
    assert {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"} <= set(docs)
    cron = docs["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and len(cron["schedule"].split()) == 5
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert "create" in pod["containers"][0]["command"]
    assert {"create"} <= set(docs["Role"]["rules"][0]["verbs"]) and docs["Role"]["rules"][0]["resources"] == ["rayjobs"]
    (rayjob,) = [yaml.safe_load(v) for v in docs["ConfigMap"]["data"].values()]
    assert rayjob["kind"] == "RayJob" and rayjob["metadata"]["generateName"]
    _check_rayjob_spec(rayjob["spec"])
    assert "jobs.backfill" in rayjob["spec"]["entrypoint"]


def test_dockerfile_installs_the_project_with_token_auth():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:2\.60\.0", text, re.M)
    assert "ENV RAY_AUTH_MODE=token" in text and "pip install --no-cache-dir -e /app" in text


@pytest.mark.parametrize("name", ["colorize-example.yaml", "backfill-example.yaml"])
def test_job_configs_named_by_the_cluster_files_load(name):
    _check_entrypoint(f"python -m jobs.{name.split('-')[0]} --config /app/configs/{name}")
