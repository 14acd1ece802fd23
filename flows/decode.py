"""Decode stage: request messages → NetFlow records, packet requests, or dead letters.

Works on every delivery of one activation at once (``flat_map_batch``) and merges all NetFlow
rows into a single :class:`FlowRecords`, so later stages see few large items.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.rabbitmq import CaughtUp, Delivery
from flows.records import KEY_SCHEMA, FlowRecords
from phoenix import schema
from phoenix.config import Settings

Decoded = FlowRecords | schema.Request | CaughtUp | bytes  # bytes: a dead-letter document


class Decoder:
    def __init__(self, settings: Settings) -> None:
        self.max_bytes = settings.max_message_bytes
        self.worker = settings.worker_name

    def __call__(self, deliveries: list[Delivery | CaughtUp]) -> Iterable[Decoded]:
        parts: list[tuple[Delivery, schema.Request, pa.Table, pa.Table]] = []
        for d in deliveries:
            if isinstance(d, CaughtUp):
                yield d  # for the flow meter's clock
                continue
            try:
                if len(d.body) > self.max_bytes:
                    raise schema.BadMessage("oversize", f"{len(d.body)} bytes > limit {self.max_bytes}")
                req = schema.decode_request(d.body, d.content_type)
                req.source = d.source
                req.received_ns = d.received_ns
                if req.kind == schema.KIND_PACKETS:
                    yield req
                    continue
                feats = schema.netflow_features(req.table)
                parts.append((d, req, _keys(req, req.table, feats.num_rows), feats))
            except schema.BadMessage as bad:
                yield self._dead(d, "", -1, bad.reason, bad.detail, 0)
        if parts:
            yield from self._records(parts)

    def _records(self, parts) -> Iterable[Decoded]:
        # One matrix conversion for every message of the activation: per-column costs are paid once.
        x = schema.netflow_matrix(pa.concat_tables([p[3] for p in parts]))
        keys = pa.concat_tables([p[2] for p in parts])
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            edges = np.cumsum([0] + [p[3].num_rows for p in parts])
            for (d, req, _, _), a, b in zip(parts, edges[:-1], edges[1:], strict=True):
                bad_rows = np.flatnonzero(~finite[a:b])
                if bad_rows.size:
                    detail = (f"{bad_rows.size} of {b - a} records hold NaN or infinity "
                              f"(rows {bad_rows[:10].tolist()})")
                    yield self._dead(d, req.device_id, req.seq, "non_finite", detail, int(bad_rows.size))
            keys, x = keys.filter(pa.array(finite)), x[finite]
        if len(x):
            yield FlowRecords(keys, x)

    def _dead(self, d: Delivery, device: str, seq: int, reason: str, detail: str, n: int) -> bytes:
        return schema.dead_letter(reason, detail, body=d.body, device_id=device, seq=seq, source=d.source,
                                  records=n, received_ts_ns=d.received_ns, worker=self.worker)


_ROWS = pa.array([str(i) for i in range(65536)])


def _row_numbers(n: int) -> pa.Array:
    """"0".."n-1" as strings, from a cache: verdict ids are built for every record."""
    global _ROWS
    if n > len(_ROWS):
        _ROWS = pa.array([str(i) for i in range(n)])
    return _ROWS.slice(0, n)


def _keys(req: schema.Request, table: pa.Table, n: int) -> pa.Table:
    names = set(table.column_names)

    def col(name: str, typ: pa.DataType, default):
        if name in names:
            try:
                return pc.cast(pc.fill_null(table.column(name), default), typ)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise schema.BadMessage("bad_type", f"column {name} is not {typ}") from None
        return pa.array(np.full(n, default) if not isinstance(default, str) else [default] * n, typ)

    # Deterministic ids: the device's own sequence number when it sends one, else the stream
    # position, which a replay of the same message reproduces.
    prefix = f"{req.device_id}:{req.seq}:" if req.seq >= 0 and req.device_id else f"{req.source}:"
    ids = pc.utf8_replace_slice(_row_numbers(n), 0, 0, prefix)
    sent = req.send_ts_ns or time.time_ns()
    return pa.Table.from_arrays([
        ids,
        pa.array([req.device_id] * n, pa.string()) if n else pa.array([], pa.string()),
        pa.array(np.full(n, req.seq, np.int64)),
        col(schema.SRC_ADDR, pa.string(), ""),
        col(schema.SRC_PORT, pa.int32(), 0),
        col(schema.DST_ADDR, pa.string(), ""),
        col(schema.DST_PORT, pa.int32(), 0),
        pc.cast(table.column("PROTOCOL"), pa.int16(), safe=False),
        col(schema.FIRST_SEEN, pa.int64(), sent),
        col(schema.LAST_SEEN, pa.int64(), sent),
        pa.array(np.full(n, sent, np.int64)),
    ], schema=KEY_SCHEMA)
