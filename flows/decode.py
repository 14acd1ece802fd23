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

from flows.rabbitmq import Delivery
from flows.records import KEY_SCHEMA, FlowRecords
from phoenix import schema
from phoenix.config import Settings

Decoded = FlowRecords | schema.Request | bytes  # bytes: a dead-letter document


class Decoder:
    def __init__(self, settings: Settings) -> None:
        self.max_bytes = settings.max_message_bytes
        self.worker = settings.worker_name

    def __call__(self, deliveries: list[Delivery]) -> Iterable[Decoded]:
        records: list[FlowRecords] = []
        for d in deliveries:
            try:
                if len(d.body) > self.max_bytes:
                    raise schema.BadMessage("oversize", f"{len(d.body)} bytes > limit {self.max_bytes}")
                req = schema.decode_request(d.body, d.content_type)
                req.source = d.source
                if req.kind == schema.KIND_PACKETS:
                    yield req
                    continue
                good, dead = netflow_records(req)
                if len(good):
                    records.append(good)
                if dead is not None:
                    yield self._dead(d, req.device_id, req.seq, *dead)
            except schema.BadMessage as bad:
                yield self._dead(d, "", -1, bad.reason, bad.detail, 0)
        if records:
            yield FlowRecords.concat(records)

    def _dead(self, d: Delivery, device: str, seq: int, reason: str, detail: str, n: int) -> bytes:
        return schema.dead_letter(reason, detail, body=d.body, device_id=device, seq=seq, source=d.source,
                                  records=n, received_ts_ns=d.received_ns, worker=self.worker)


def netflow_records(req: schema.Request) -> tuple[FlowRecords, tuple[str, str, int] | None]:
    """The classifiable rows of a NetFlow request, and a dead-letter reason for the rest.

    Raises :class:`phoenix.schema.BadMessage` when the message as a whole is unusable.
    """
    table = req.table
    x = schema.netflow_matrix(table)
    n = len(x)
    idx = np.arange(n)
    keys = _keys(req, table, n)
    finite = np.isfinite(x).all(axis=1)
    if finite.all():
        return FlowRecords(keys, x), None
    bad_rows = idx[~finite]
    detail = f"{len(bad_rows)} of {n} records hold NaN or infinity (rows {bad_rows[:10].tolist()})"
    keep = pa.array(finite)
    return FlowRecords(keys.filter(keep), x[finite]), ("non_finite", detail, len(bad_rows))


def _keys(req: schema.Request, table: pa.Table, n: int) -> pa.Table:
    def col(name: str, typ: pa.DataType, default):
        if name in table.column_names:
            try:
                return pc.cast(pc.fill_null(table.column(name), default), typ)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise schema.BadMessage("bad_type", f"column {name} is not {typ}") from None
        return pa.array(np.full(n, default) if not isinstance(default, str) else [default] * n, typ)

    # Deterministic ids: the device's own sequence number when it sends one, else the stream
    # position, which a replay of the same message reproduces.
    prefix = f"{req.device_id}:{req.seq}:" if req.seq >= 0 and req.device_id else f"{req.source}:"
    ids = pc.binary_join_element_wise(prefix, pc.cast(pa.array(np.arange(n)), pa.string()), "")
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
