"""Typed job configuration. Configs never read sys.argv or touch storage; jobs do.

Every field can be given in a YAML file (``--config``) or as a command-line flag; unknown keys are
rejected so a typo in YAML fails loudly instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from .imageio import DEFAULT_MAX_PIXELS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(_Strict):
    """Object-storage settings. Unset fields fall back to the standard AWS environment variables."""

    endpoint_url: str | None = Field(None, description="S3 endpoint, e.g. http://127.0.0.1:8333 (AWS_ENDPOINT_URL).")
    region: str | None = Field(None, description="S3 region (AWS_REGION).")
    access_key_id: SecretStr | None = Field(None, description="Prefer AWS_ACCESS_KEY_ID; never logged.")
    secret_access_key: SecretStr | None = Field(None, description="Prefer AWS_SECRET_ACCESS_KEY; never logged.")

    def redacted(self) -> dict[str, Any]:
        """JSON-safe, with the key and secret replaced by '***' (for files written beside outputs)."""
        data = self.model_dump(mode="json")
        for key in ("access_key_id", "secret_access_key"):
            data[key] = "***" if getattr(self, key) else None
        return data

    def options(self):
        from .storage import StorageOptions

        return StorageOptions.from_env(
            endpoint_url=self.endpoint_url,
            region=self.region,
            key=self.access_key_id.get_secret_value() if self.access_key_id else None,
            secret=self.secret_access_key.get_secret_value() if self.secret_access_key else None,
        )


class InferenceConfig(_Strict):
    batch_size: int = Field(16, ge=1, description="Images per forward pass. Larger amortises overhead; "
                            "GPU memory bounds it (SIGGRAPH17 at 256x256 fp16 fits hundreds on an 80 GB card).")
    num_actors: int | None = Field(None, ge=1, description="Model replicas. Default: one per GPU, "
                                   "else one per 16 CPUs (at least 1).")
    cpus_per_actor: float | None = Field(None, gt=0, description="CPUs reserved per replica on CPU-only "
                                         "clusters; default leaves half the cluster to the CPU stages.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads per CPU replica (default: "
                                "its reserved CPUs).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: one GPU per replica when the "
                                                   "cluster has GPUs, else CPU.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast where the processor supports it and the output stays "
        "within `max_precision_error` of fp32 on a probe image, else fp32.")
    max_precision_error: float = Field(1.0, gt=0, description="Largest mean |ab| difference (Lab units) "
                                       "against fp32 that reduced precision may introduce.")
    channels_last: bool = Field(True, description="NHWC memory format: faster convolutions on oneDNN and "
                                "tensor cores.")


class CpuStageConfig(_Strict):
    batch_size: int = Field(8, ge=1, description="Images per CPU task (decode, compose).")
    concurrency: int | None = Field(None, ge=1, description="Parallel CPU tasks per stage (default: Ray decides).")
    memory_per_task: int = Field(512 * 1024**2, ge=0, description="Bytes of memory Ray reserves per decode or "
                                 "compose task, so a node never runs more large-scan decodes at once than its "
                                 "memory holds (a 100 MP scan needs about 1.5 GB in float32).")


class JobConfig(_Strict):
    """What every pipeline job shares: pool settings, storage, and a secret-free resolved form."""

    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    cpu: CpuStageConfig = Field(default_factory=CpuStageConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @field_validator("output_format", mode="before", check_fields=False)
    @classmethod
    def _fmt(cls, v: Any) -> Any:
        return {"jpg": "jpeg"}.get(str(v).lower(), str(v).lower()) if v is not None else v

    def resolved(self) -> dict[str, Any]:
        """JSON-safe resolved config with secrets removed (for config.json beside the outputs)."""
        return {**self.model_dump(mode="json"), "storage": self.storage.redacted()}


class ColorizeConfig(JobConfig):
    manifest: str = Field(..., description="Parquet file or prefix of files, local or s3://.")
    output: str = Field(..., description="Output prefix, local or s3://.")
    model: str = Field("effnet_unet", description="Registry name or a trained checkpoint directory URI.")
    weights: str | None = Field(None, description="'official', a local path, https:// or s3:// URI; "
                                "default: the model's bundled weights if it has any.")
    temperature: float | None = Field(None, gt=0, description="ECCV16 annealed-mean temperature (paper: 0.38).")
    output_format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality (100 = lossless WebP).")
    saturation: float = Field(1.0, ge=0, description="Factor applied to the predicted ab.")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Larger images are refused as error rows.")
    hint_radius: int = Field(2, ge=0, description="SIGGRAPH17 hints paint a (2r+1)^2 patch at model size.")
    shard_rows: int = Field(1000, ge=1, description="Rows per manifest shard, the unit of resume: a crash "
                            "redoes at most the shards in flight.")
    shards_per_dataset: int = Field(200, ge=1, description="Shards per Ray Dataset: very large manifests run "
                                    "as waves of this many shards, which bounds the driver's Ray Data "
                                    "bookkeeping; each wave restarts the inference actors (seconds).")
    overwrite: bool = Field(False, description="Ignore previous progress and redo every image.")
    max_error_fraction: float = Field(1.0, ge=0, le=1, description="Exit non-zero above this error fraction.")
    limit: int | None = Field(None, ge=1, description="Process at most this many manifest rows (smoke runs).")


def load_yaml(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested merge; overrides whose value is None are ignored (flags not given on the command line)."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict):
            nested = merge(out.get(key) or {}, value)
            if nested:
                out[key] = nested
        else:
            out[key] = value
    return out
