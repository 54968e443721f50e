"""Typed job configuration. Configs never read sys.argv or touch storage; jobs do.

Every field can be given in a YAML file (``--config``) or as a command-line flag; unknown keys are
rejected so a typo in YAML fails loudly instead of being ignored.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from .errors import UserError
from .imageio import DEFAULT_MAX_PIXELS
from .models.registry import DEFAULT_MODEL

M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(_Strict):
    """Object-storage settings. Unset fields fall back to the standard AWS environment variables."""

    endpoint_url: str | None = Field(None, description="S3 endpoint, e.g. http://127.0.0.1:8333 (AWS_ENDPOINT_URL).")
    region: str | None = Field(None, description="S3 region (AWS_REGION).")
    access_key_id: SecretStr | None = Field(None, description="Prefer AWS_ACCESS_KEY_ID; never logged.")
    secret_access_key: SecretStr | None = Field(None, description="Prefer AWS_SECRET_ACCESS_KEY; never logged.")
    retry_seconds: float = Field(60.0, ge=0, description="How long each read/write keeps retrying a transient "
                                 "failure (outage, 5xx, throttling) before its row is left `transient` for a "
                                 "rerun. Longer rides out longer outages; shorter fails faster.")
    request_attempts: int = Field(5, ge=1, le=20, description="botocore tries per HTTP request (standard mode).")

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
            retry_seconds=self.retry_seconds,
            request_attempts=self.request_attempts,
        )


class InferenceConfig(_Strict):
    batch_size: int = Field(16, ge=1, description="Images per forward pass. Larger amortises overhead; "
                            "GPU memory bounds it (SIGGRAPH17 at 256x256 fp16 fits hundreds on an 80 GB card).")
    num_actors: int | None = Field(None, ge=1, description="Model replicas. Default: one per GPU, "
                                   "else one per 16 CPUs (at least 1).")
    max_actors: int | None = Field(None, ge=1, description="Largest replica count an autoscaling cluster may "
                                   "grow the pool to (Ray Data ActorPoolStrategy max_size). Default: one per "
                                   "GPU the cluster gains on GPU clusters; fixed at num_actors on CPU-only ones.")
    cpus_per_actor: float | None = Field(None, gt=0, description="CPUs reserved per replica on CPU-only "
                                         "clusters; default: the job's measured share of the per-image cost.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads per CPU replica (default: "
                                "its reserved CPUs, rounded: cores are never oversubscribed).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: one GPU per replica when the "
                                                   "cluster has GPUs, else CPU.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast where the processor supports it and the output stays "
        "within `max_precision_error` of fp32 on a probe image, else fp32.")
    max_precision_error: float = Field(1.0, gt=0, description="Largest mean |ab| difference (Lab units) "
                                       "against fp32 that reduced precision may introduce.")
    channels_last: bool = Field(True, description="NHWC memory format: faster convolutions on oneDNN and "
                                "tensor cores.")
    layout: Literal["auto", "fused", "split"] = Field(
        "auto", description="colorize job: 'fused' runs decode -> inference -> compose in one actor holding the "
        "model, one per CPU (no batches shipped between processes, no task-worker churn); 'split' runs decode and "
        "compose as CPU tasks around a pool of inference actors. auto: fused on CPU-only clusters, split where "
        "there are GPUs. Evaluation always splits (one pool per model).")


class CpuStageConfig(_Strict):
    batch_size: int = Field(8, ge=1, description="Images per CPU task (decode, compose).")
    concurrency: int | None = Field(None, ge=1, description="Parallel CPU tasks per stage (default: Ray decides).")
    memory_per_task: int = Field(1024**3, ge=0, description="Bytes of memory Ray reserves per decode or "
                                 "compose task, so a node never runs more large-scan decodes at once than its "
                                 "memory holds. Compose holds the source, the output and its read-back (3 "
                                 "bytes per pixel each) plus a few MB of bands: ~1 GB for a 100 MP scan.")


class ProvenanceConfig(_Strict):
    """Content Credentials (C2PA): the signing certificate chain and its key. Without both, outputs carry the
    provenance XMP alone (always written) and no C2PA manifest."""

    cert: str | None = Field(None, description="PEM certificate chain (signing certificate first, then its "
                             "issuers), local path or s3://. It must be issued by a CA (your own is fine) and "
                             "carry the emailProtection or documentSigning extended key usage.")
    key: str | None = Field(None, repr=False, description="PEM private key of the signing certificate, local "
                            "path or s3://; never written to logs, outputs or config.json.")
    key_password_env: str | None = Field(None, description="Environment variable holding the key's password, "
                                         "if the PEM is encrypted (never the password itself).")
    tsa_url: str | None = Field(None, description="RFC 3161 timestamp authority URL (optional: the signature "
                                "then proves when it was made; every output costs one request to it).")

    @property
    def signing(self) -> bool:
        return bool(self.cert or self.key)

    @model_validator(mode="after")
    def _both(self) -> "ProvenanceConfig":
        if bool(self.cert) != bool(self.key):
            raise ValueError("C2PA signing needs both the certificate chain (--c2pa-cert, provenance.cert) and "
                             "its key (--c2pa-key, provenance.key)")
        return self

    def redacted(self) -> dict[str, Any]:
        from .storage import redact_uri

        data = self.model_dump(mode="json")
        data["cert"] = redact_uri(self.cert) if self.cert else None
        data["key"] = "***" if self.key else None
        return data


class JobConfig(_Strict):
    """What every pipeline job shares: pool settings, storage, and a secret-free resolved form."""

    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    cpu: CpuStageConfig = Field(default_factory=CpuStageConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    provenance: ProvenanceConfig = Field(default_factory=ProvenanceConfig)

    @field_validator("output_format", mode="before", check_fields=False)
    @classmethod
    def _fmt(cls, v: Any) -> Any:
        return {"jpg": "jpeg", "tif": "tiff"}.get(str(v).lower(), str(v).lower()) if v is not None else v

    @field_validator("output", mode="after", check_fields=False)
    @classmethod
    def _no_glob(cls, v: Any) -> Any:
        # --overwrite deletes under the output; a pattern there must never be able to widen that delete.
        if isinstance(v, str) and any(c in v for c in "*?["):
            raise ValueError(f"{v!r} contains a glob character (* ? [), which --overwrite must never expand: "
                             f"pick an output path without them")
        return v

    def resolved(self) -> dict[str, Any]:
        """JSON-safe resolved config with secrets removed (for config.json beside the outputs): storage
        credentials masked, and presigned URLs (weights, model, manifest) without their signatures."""
        from .storage import redact_uri

        data = {**self.model_dump(mode="json"), "storage": self.storage.redacted(),
                "provenance": self.provenance.redacted()}
        for key in ("weights", "model", "manifest", "output", "reference", "models"):
            value = data.get(key)
            if isinstance(value, str):
                data[key] = redact_uri(value)
            elif isinstance(value, list):
                data[key] = [redact_uri(v) if isinstance(v, str) else v for v in value]
        return data


class ColorizeConfig(JobConfig):
    manifest: str = Field(..., description="Parquet file or prefix of files, local or s3://.")
    output: str = Field(..., description="Output prefix, local or s3://.")
    model: str = Field(DEFAULT_MODEL, description="Registry name or a trained checkpoint directory URI.")
    weights: str | None = Field(None, description="'official', a local path, https:// or s3:// URI; "
                                "default: the model's bundled weights if it has any.")
    temperature: float | None = Field(None, gt=0, description="ECCV16 annealed-mean temperature (paper: 0.38).")
    output_format: Literal["jpeg", "png", "webp", "tiff"] = Field(
        "jpeg", description="jpeg/webp for access copies; png or tiff (deflate) for masters, which hold 16 bits.")
    output_depth: Literal["auto", "8", "16"] = Field(
        "auto", description="Bits per sample of the outputs: auto is 16 where the source is 16-bit and the "
        "format holds it (png, tiff), else 8; with visible_label auto is 8 (access copies).")
    visible_label: bool = Field(False, description="Stamp a small 'colourised by machine' mark bottom right: "
                                "for access copies only, refused with masters (tiff, or 16-bit).")
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
    retry_errors: bool = Field(False, description="Try rows that earlier runs recorded as errors again (after "
                               "the cause was fixed); each image keeps one current metrics row.")
    max_error_fraction: float = Field(0.1, ge=0, le=1, description="Exit 3 when more than this fraction of the "
                                      "processed rows are errors. A few percent of corrupt, missing or refused "
                                      "scans is normal in a digitisation run and must not fail it; a systemic "
                                      "fault (a wrong prefix or format, no access) shows as far more. A run in "
                                      "which no row succeeded never exits 0, whatever this is.")
    limit: int | None = Field(None, ge=1, description="Process at most this many manifest rows (smoke runs).")

    @field_validator("output_depth", mode="before")
    @classmethod
    def _depth(cls, v: Any) -> Any:
        return str(v).lower() if isinstance(v, (int, str)) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _masters(self) -> "ColorizeConfig":
        from .imageio import FORMAT_DEPTHS

        if self.output_depth == "16" and 16 not in FORMAT_DEPTHS[self.output_format]:
            raise ValueError(f"output_depth 16 needs a format that holds 16 bits (png or tiff), not "
                             f"{self.output_format}")
        if self.visible_label and (self.output_format == "tiff" or self.output_depth == "16"):
            raise ValueError("visible_label is for access copies: masters (tiff, or output_depth 16) never get "
                             "it; write the master and a labelled jpeg access copy in two runs")
        return self


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"config file {path} not found: check the --config path") from None
    except IsADirectoryError:
        raise UserError(f"--config {path} is a directory: give a YAML file") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def build(cls: type[M], data: dict[str, Any], *, source: str | Path | None = None) -> M:
    """``cls(**data)``, with a validation failure turned into one :class:`UserError` line that names the key,
    says what is wrong and, for a typo, the key that was probably meant."""
    try:
        return cls(**data)
    except ValidationError as exc:
        raise UserError(explain(exc, cls, source)) from None


def explain(exc: ValidationError, cls: type[BaseModel], source: str | Path | None = None) -> str:
    """One line for a pydantic ValidationError (the first problem, and how many more there are)."""
    problems = exc.errors(include_url=False)
    first = problems[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc) or "config"
    where = f"{source}: " if source else ""
    if first["type"] == "extra_forbidden":
        known = _field_names(cls, loc[:-1])
        guess = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        hint = f" (did you mean '{'.'.join([*loc[:-1], guess[0]])}'?)" if guess else \
            f" (known keys: {', '.join(sorted(known))})"
        text = f"unknown key '{key}'{hint}"
    elif first["type"] == "missing":
        flag = "--" + loc[-1].replace("_", "-")
        text = f"missing required setting '{key}': give {flag} or set it in the config file"
    elif first["type"] == "value_error":
        msg = first['msg'].removeprefix('Value error, ')
        text = f"'{key}': {msg}" if loc else msg
    else:
        value = first.get("input")
        shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
        text = f"'{key}' = {shown[:80]}: {first['msg']}"
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return f"{where}{text}{more}".replace("\n", " ")


def _field_names(cls: type[BaseModel], path: list[str]) -> list[str]:
    model: Any = cls
    for name in path:
        field = getattr(model, "model_fields", {}).get(name)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


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
