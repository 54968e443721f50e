"""Batch and table schemas, declared once.

Ray Data and Arrow unify block schemas: a column that is all null in one block is inferred as float there and
the merge with a block holding strings fails (``Unable to merge: Field error has incompatible types``). So every
column a stage emits, and every column of the metrics dataset, has its Arrow type here, whatever its values.
"""

from __future__ import annotations

import pyarrow as pa

METRICS_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("status", pa.string()), ("error", pa.string()), ("model", pa.string()),
    ("width", pa.int64()), ("height", pa.int64()), ("psnr", pa.float64()), ("ssim", pa.float64()),
    ("rmse", pa.float64()), ("colorfulness", pa.float64()), ("deltae2000", pa.float64()),
    ("seconds", pa.float64()), ("metrics_against", pa.string()),
])
METRIC_COLUMNS = tuple(METRICS_SCHEMA.names)
