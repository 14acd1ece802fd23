"""pcap replay devices: play captures as N simulated devices publishing packet batches.

* Packets are dealt to devices by a hash of their direction-free flow key, so each device sees
  whole flows (as a gateway would) and the dataflow meters the same flows as ``phoenix
  features`` does offline.
* Timing: ``speed`` X keeps the capture's gaps divided by X (0 = as fast as possible);
  ``rate`` sends a fixed number of packets per second instead. Packet timestamps are rebased
  to the wall clock at start but keep the capture's spacing, whatever the speed: the meter sees
  the original durations, so flow features (and verdicts) match the offline meter.
* ``loop`` plays the files again, each pass shifted after the previous one, so a pass's flows
  are new flows (new first-seen times, new verdict ids) rather than duplicates.
* Each message is one device's batch (Arrow IPC, kind ``packets``), confirmed by the broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from capture.pcapio import DecodeStats, PacketBatch, iter_capture
from phoenix import schema
from phoenix.config import Settings


def device_id(i: int) -> str:
    return f"pcap-{i:04d}"


@dataclass
class Message:
    device: int
    seq: int
    body: bytes
    packets: int


def load_packets(paths: list[str]) -> tuple[PacketBatch, DecodeStats]:
    """All packets of the files on one timeline: each file starts at offset 0, merged by time."""
    stats = DecodeStats()
    parts = []
    for p in paths:
        b = PacketBatch.concat(list(iter_capture(p, stats=stats)))
        if len(b):
            b.ts_ns = b.ts_ns - int(b.ts_ns.min())
            parts.append(b)
    allp = PacketBatch.concat(parts)
    if len(parts) > 1:
        allp = allp.take(np.argsort(allp.ts_ns, kind="stable"))
    return allp, stats


def messages(pk: PacketBatch, *, devices: int, batch: int, speed: float, rate: float, loop: bool,
             limit: int | None = None, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> Iterator[Message]:
    """Yield device messages, sleeping to keep the requested pace."""
    from flows.meter import canonical

    n = len(pk)
    if n == 0:
        return
    dev = (canonical(pk)["key"] % np.uint64(devices)).astype(np.int64)
    rel = pk.ts_ns - int(pk.ts_ns.min())
    span = int(rel.max()) + 1_000_000_000  # next pass starts 1 s after this one ends
    seqs = np.zeros(devices, np.int64)
    max_chunk = batch * devices
    sent = 0
    pass_no = 0
    t_start = clock()
    wall0 = time.time_ns()
    while True:
        if rate > 0:
            sched = (np.arange(n) + pass_no * n) / rate
        elif speed > 0:
            sched = (rel + pass_no * span) / 1e9 / speed
        else:
            sched = None
        i = 0
        while i < n:
            if limit is not None and sent >= limit:
                return
            if sched is None:
                j = min(n, i + max_chunk)
            else:
                now = clock() - t_start
                j = int(np.searchsorted(sched, now, side="right"))
                if j <= i:
                    sleep(min(0.05, max(0.0, sched[i] - now)))
                    continue
                j = min(j, i + max_chunk)
            if limit is not None:
                j = min(j, i + (limit - sent))
            chunk = pk.take(np.arange(i, j))
            chunk.ts_ns = wall0 + rel[i:j] + pass_no * span
            d = dev[i:j]
            order = np.argsort(d, kind="stable")
            ds = d[order]
            cuts = np.flatnonzero(ds[1:] != ds[:-1]) + 1
            for idx in np.split(order, cuts):
                k = int(d[idx[0]])
                for s in range(0, len(idx), batch):
                    part = chunk.take(idx[s:s + batch])
                    body = schema.encode_request(part.to_table(), kind=schema.KIND_PACKETS,
                                                 device_id=device_id(k), seq=int(seqs[k]),
                                                 send_ts_ns=time.time_ns())
                    yield Message(k, int(seqs[k]), body, len(part))
                    seqs[k] += 1
            sent += j - i
            i = j
        if not loop:
            return
        pass_no += 1


def replay(paths: list[str], *, devices: int, speed: float, rate: float, batch: int, loop: bool,
           limit: int | None, settings: Settings, progress: bool = True) -> dict:
    from capture.publisher import publish_messages

    pk, stats = load_packets(paths)
    if not len(pk):
        raise SystemExit(f"no IP packets to replay in {paths} ({stats.errors or 'empty'})")
    stream = messages(pk, devices=devices, batch=batch, speed=speed, rate=rate, loop=loop, limit=limit)
    done = publish_messages(settings, stream, device_id=device_id, size=lambda m: m.packets,
                            content_type=schema.ARROW_CONTENT_TYPE, unit="packets", progress=progress)
    return {"packets": done.units, "messages": done.messages, "devices": devices, "seconds": done.seconds,
            "packets_per_s": done.per_s, "reconnects": done.reconnects,
            "decode": {k: v for k, v in stats.as_dict().items() if v}}
