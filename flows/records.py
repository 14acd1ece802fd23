"""The unit that moves between dataflow stages: a batch of flow records ready to classify.

NetFlow requests become one directly; packet requests become one when the flow meter closes
flows. Features stay a raw (n, 39) float64 matrix until the classify stage applies the
artifact's preprocessing, so both routes share one transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from phoenix.schema import VERDICT_SCHEMA

# Per-record identity and flow key: the leading columns of a verdict, plus the device's send
# time; the classify stage appends score, label and timing to reach VERDICT_SCHEMA.
KEY_SCHEMA = pa.schema([VERDICT_SCHEMA.field(name) for name in (
    "verdict_id", "device_id", "seq", "src_addr", "src_port", "dst_addr", "dst_port", "protocol",
    "first_seen_ns", "last_seen_ns", "send_ts_ns")])


@dataclass
class FlowRecords:
    """``features[i]`` is the raw NF-v2 vector of the flow described by ``keys`` row ``i``."""

    keys: pa.Table
    features: np.ndarray
    # bits of the context detectors that flagged each flow (flows.context), None = not judged
    context: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.keys.num_rows != len(self.features):
            raise ValueError(f"{self.keys.num_rows} keys for {len(self.features)} feature rows")
        if self.context is not None and len(self.context) != len(self.features):
            raise ValueError(f"{len(self.context)} context flags for {len(self.features)} rows")

    def __len__(self) -> int:
        return self.keys.num_rows

    @staticmethod
    def concat(parts: list[FlowRecords]) -> FlowRecords:
        if len(parts) == 1:
            return parts[0]
        context = None
        if any(p.context is not None for p in parts):
            context = np.concatenate([p.context if p.context is not None else np.zeros(len(p), np.uint8)
                                      for p in parts])
        return FlowRecords(
            pa.concat_tables([p.keys for p in parts]),
            np.concatenate([p.features for p in parts]),
            context,
        )

    def slice(self, start: int, stop: int) -> FlowRecords:
        ctx = None if self.context is None else self.context[start:stop]
        return FlowRecords(self.keys.slice(start, stop - start), self.features[start:stop], ctx)

    def take(self, rows: np.ndarray) -> FlowRecords:
        """Rows by boolean mask or index array."""
        idx = np.flatnonzero(rows) if rows.dtype == bool else rows
        ctx = None if self.context is None else self.context[idx]
        return FlowRecords(self.keys.take(pa.array(idx, pa.int64())), self.features[idx], ctx)

    def with_context(self, context: np.ndarray) -> FlowRecords:
        return FlowRecords(self.keys, self.features, context.astype(np.uint8))
