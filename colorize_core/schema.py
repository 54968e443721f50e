"""Batch and table schemas, declared once.

Ray Data and Arrow unify block schemas: a column that is all null in one block is inferred as float there and
the merge with a block holding strings fails (``Unable to merge: Field error has incompatible types``). So every
column a stage emits, and every column of the metrics dataset, has its Arrow type here, whatever its values.

The rule the Ray adapter enforces when it turns a stage's ``dict[str, np.ndarray]`` batch into an Arrow block
(:func:`colorize_core.ray_adapter.to_block`):

* object columns (strings, optional values, hint lists) take the type declared in :data:`BATCH_TYPES`; an
  object column that is not declared there is a bug and raises;
* numeric 1-D columns keep their numpy dtype (fixed by the stage's code, not by the values), so the
  per-model ``seconds_<model>`` columns of evaluation need no entry;
* numeric N-D columns (``l``, ``l_<h>x<w>``, ``ab``, ``ab_<model>``, ``hint_ab``, ``hint_mask``) are float32
  tensors, one fixed shape per column.
"""

from __future__ import annotations

import pyarrow as pa

# The scores of one image, as colorize_core.metrics.compute_metrics returns them (metrics.METRIC_NAMES).
SCORES = ("psnr", "ssim", "rmse", "colorfulness", "deltae2000")

# Fixity and metadata of a written output (colorize_core.archival.Finished.columns; colorize_core.fixity reads them
# back): its key relative to the run's output prefix, the sha256 of the source bytes read and of the output bytes
# written, their size, and every metadata block dropped and why (None: nothing was). Null in error rows.
FIXITY_FIELDS = (("output_path", pa.string()), ("source_sha256", pa.string()), ("output_sha256", pa.string()),
                 ("output_bytes", pa.int64()), ("metadata", pa.string()))
FIXITY_COLUMNS = tuple(name for name, _ in FIXITY_FIELDS)

METRICS_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("status", pa.string()), ("error", pa.string()), ("model", pa.string()),
    ("width", pa.int64()), ("height", pa.int64()), *((name, pa.float64()) for name in SCORES),
    ("seconds", pa.float64()), ("metrics_against", pa.string()), *FIXITY_FIELDS,
])
METRIC_COLUMNS = tuple(METRICS_SCHEMA.names)

HINTS_TYPE = pa.list_(pa.struct([("x", pa.float64()), ("y", pa.float64()), ("a", pa.float64()),
                                 ("b", pa.float64())]))

# Manifest rows as ExpandShards emits them (optional manifest columns may be absent, never retyped).
ROWS_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("uri", pa.string()), ("reference_uri", pa.string()), ("hints", HINTS_TYPE),
    ("shard_id", pa.string()),
])

# What DecodeStage adds (and InferenceStage passes on): per-row state of the image so far.
DECODE_SCHEMA = pa.schema([
    ("status", pa.string()), ("error", pa.string()), ("reuse", pa.bool_()), ("seconds", pa.float64()),
])

# Metrics rows on their way to the driver: the metrics table plus the shard each row belongs to.
METRIC_BATCH_SCHEMA = METRICS_SCHEMA.append(pa.field("shard_id", pa.string()))

# Every declared column of any stage batch, by name (one type per name across stages).
BATCH_TYPES: dict[str, pa.DataType] = {
    f.name: f.type for schema in (ROWS_SCHEMA, DECODE_SCHEMA, METRIC_BATCH_SCHEMA) for f in schema
}
