"""Dataflow stage: packet requests → NF-v2 flow records, with keyed, recoverable meter state.

``meter_packets(step_id, packets, settings)`` takes decoded :class:`phoenix.schema.Request`
items of kind ``packets`` and returns ``(flows, dead_letters)``:

* each request is validated against :data:`phoenix.schema.PACKET_SCHEMA` (a bad one becomes a
  dead-letter record on the second stream, never an exception);
* its packets are split with numpy into ``S`` shards by a hash of the direction-free flow key,
  so every packet of a flow reaches the same shard whatever device or partition sent it;
* a keyed ``stateful_batch`` step holds one :class:`flows.meter.FlowMeter` per shard key.
  Bytewax routes keys to workers, so the flow table moves with its key across workers and
  processes, and ``snapshot`` (the shard's open flows) is what recovery restores;
* a processing-time notification (``tick``) expires idle flows when no packets arrive: each
  device's event-time watermark is advanced by the time its partition has been known to be
  drained since the device's last request was read (the source's :class:`CaughtUp` marks,
  sent to every shard), so a dataflow that lags its input never ends a flow whose packets
  are still queued; without marks (in-process tests) by the wall time since its last packet.
  Watermarks are per device because partitions are consumed at different paces;
* finished flows leave as :class:`flows.records.FlowRecords` batches (one per shard wake-up,
  never single records: Bytewax costs microseconds per item).

Shards default to 4 (``PHOENIX_METER_SHARDS`` or ``settings.meter_shards``): raise it to at
least the number of Bytewax workers (``-i/-a`` processes × threads) so every worker holds flow
tables; keep it low otherwise, because each shard wake-up meters its own, smaller, arrays.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
from bytewax import operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from capture.pcapio import PacketBatch, str_to_addr
from flows.meter import FlowMeter, MeterConfig, canonical
from flows.rabbitmq import CaughtUp
from flows.records import FlowRecords
from phoenix.schema import KIND_PACKETS, PACKET_SCHEMA, Request, dead_letter

DEFAULT_SHARDS = 4
TICK = timedelta(seconds=1)


class ShardBatch:
    """The packets of one request that belong to one shard."""

    __slots__ = ("device_id", "send_ts_ns", "packets", "stream", "received_ns")

    def __init__(self, device_id: str, send_ts_ns: int, packets: PacketBatch, stream: str = "",
                 received_ns: int = 0) -> None:
        self.device_id = device_id
        self.send_ts_ns = send_ts_ns
        self.packets = packets
        self.stream = stream
        self.received_ns = received_ns


def packets_of(req: Request) -> PacketBatch:
    """Validate a packets request's table; raises ValueError with a dead-letter reason."""
    if req.kind != KIND_PACKETS:
        raise ValueError(f"wrong_kind: {req.kind!r} request reached the packet meter")
    t = req.table
    missing = [f.name for f in PACKET_SCHEMA if f.name not in t.column_names]
    if missing:
        raise ValueError(f"packet_schema: {len(missing)} packet columns missing (first: {missing[0]})")
    cols = []
    for f in PACKET_SCHEMA:
        c = t.column(f.name)
        if c.null_count:
            raise ValueError(f"packet_nulls: column {f.name} has {c.null_count} nulls")
        if f.name in ("src_addr", "dst_addr") and pa.types.is_string(c.type):
            # simple devices may send text addresses; convert (slow path, still accepted)
            try:
                c = pa.array([str_to_addr(x) for x in c.to_pylist()], pa.binary(16))
            except ValueError as exc:
                raise ValueError(f"packet_types: bad address in {f.name} ({exc})") from None
        elif c.type != f.type:
            try:
                c = c.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(f"packet_types: column {f.name} is {c.type}, expected {f.type} ({exc})") from None
        cols.append(c)
    pk = PacketBatch.from_table(pa.Table.from_arrays(cols, schema=PACKET_SCHEMA))
    if len(pk) and (pk.ts_ns <= 0).any():
        raise ValueError("packet_values: ts_ns must be positive nanoseconds since the epoch")
    return pk


def shard_packets(req: Request, shards: int) -> list[tuple[str, ShardBatch]]:
    """Split one request's packets by flow-key hash into ``(shard key, ShardBatch)`` items."""
    pk = packets_of(req)
    if not len(pk):
        return []
    shard = (canonical(pk)["key"] % np.uint64(shards)).astype(np.int64)
    def batch(p: PacketBatch) -> ShardBatch:
        return ShardBatch(req.device_id, req.send_ts_ns, p, req.stream, req.received_ns)

    if (shard == shard[0]).all():
        return [(f"meter-{int(shard[0])}", batch(pk))]
    order = np.argsort(shard, kind="stable")  # stable: packets keep their time order per shard
    s_sorted = shard[order]
    cuts = np.flatnonzero(s_sorted[1:] != s_sorted[:-1]) + 1
    out = []
    for idx in np.split(order, cuts):
        out.append((f"meter-{int(shard[idx[0]])}", batch(pk.take(idx))))
    return out


class _MeterLogic(StatefulBatchLogic):
    """One shard's flow table."""

    def __init__(self, meter: FlowMeter) -> None:
        self.meter = meter

    def on_batch(self, values: list[ShardBatch | CaughtUp]) -> tuple[list[FlowRecords], bool]:
        # One meter call per device per wake-up: a call has ~1 ms of fixed numpy overhead, so
        # many small shard batches are merged first (a device's packets stay in order).
        by_dev: dict[str, list[ShardBatch]] = {}
        marks = False
        for sb in values:
            if isinstance(sb, CaughtUp):
                self.meter.caught_up(sb.stream, sb.drained_ns)
                marks = True
            else:
                by_dev.setdefault(sb.device_id, []).append(sb)
        out: list[FlowRecords] = []
        for dev, sbs in by_dev.items():
            pk = PacketBatch.concat([sb.packets for sb in sbs])
            out.extend(self.meter.add(pk, device_id=dev, send_ts_ns=max(sb.send_ts_ns for sb in sbs),
                                      stream=sbs[-1].stream, received_ns=sbs[-1].received_ns))
        if marks and self.meter.open_flows:
            rec = self.meter.expire(wall_advance=True)
            out.extend([rec] if rec is not None else [])
        return _batch(out), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[FlowRecords], bool]:
        if self.meter.open_flows:
            # no packets for a while: let each device's event time advance with the wall clock
            rec = self.meter.expire(wall_advance=True)
            return _batch([rec] if rec is not None else []), StatefulBatchLogic.RETAIN
        return [], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[FlowRecords], bool]:
        # the input ended (finite sources, tests): every open flow is finished
        rec = self.meter.flush()
        return _batch([rec] if rec is not None else []), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self.meter.open_flows:
            return None
        return datetime.now(UTC) + TICK

    def snapshot(self) -> dict:
        return self.meter.snapshot()


def _batch(parts: list[FlowRecords]) -> list[FlowRecords]:
    parts = [p for p in parts if p is not None and len(p)]
    return [FlowRecords.concat(parts)] if parts else []


def shard_count(settings: object | None) -> int:
    env = os.environ.get("PHOENIX_METER_SHARDS")
    if env:
        return max(1, int(env))
    return max(1, int(getattr(settings, "meter_shards", 0) or DEFAULT_SHARDS))


def meter_packets(step_id: str, packets: Stream[Request], settings: object) -> tuple[Stream[FlowRecords], Stream[bytes]]:
    """Meter packet requests into flow records; returns ``(flow_records, dead_letters)``.

    ``settings`` is a :class:`phoenix.config.Settings`; optional attributes ``meter_shards`` and
    ``meter_<MeterConfig field>`` (or ``PHOENIX_METER_*`` variables) tune the meter.
    """
    cfg = MeterConfig.from_env(settings)
    shards = shard_count(settings)
    per_shard = replace(cfg, max_flows=max(1024, cfg.max_flows // shards))
    worker = str(getattr(settings, "worker_name", "") or "")

    def split(req: Request | CaughtUp) -> list[tuple[str, object]]:
        if isinstance(req, CaughtUp):  # every shard may hold flows of that stream's devices
            return [("ok", (f"meter-{i}", req)) for i in range(shards)]
        try:
            return [("ok", kv) for kv in shard_packets(req, shards)]
        except ValueError as exc:
            reason, _, detail = str(exc).partition(": ")
            return [("dead", dead_letter(reason, detail, device_id=req.device_id, seq=req.seq,
                                         source=req.source, records=req.table.num_rows,
                                         received_ts_ns=time.time_ns(), worker=worker))]

    tagged = op.flat_map(f"{step_id}_split", packets, split)
    b = op.branch(f"{step_id}_valid", tagged, lambda x: x[0] == "ok")
    keyed = op.map(f"{step_id}_key", b.trues, lambda x: x[1])
    dead = op.map(f"{step_id}_dead", b.falses, lambda x: x[1])

    def build(resume: dict | None) -> _MeterLogic:
        return _MeterLogic(FlowMeter.restore(resume, per_shard) if resume else FlowMeter(per_shard))

    metered = op.stateful_batch(f"{step_id}_meter", keyed, build)
    flows = op.map(f"{step_id}_unkey", metered, lambda kv: kv[1])
    return flows, dead
