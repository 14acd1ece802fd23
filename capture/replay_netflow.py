"""NetFlow replay devices: play Parquet or CSV NF-v2 rows as N simulated devices.

Rows are dealt to devices message by message; each device numbers its messages, so every record
has a deterministic id ``<device>:<seq>:<row>``. Files without addresses (the UQ samples) get
stable synthetic ones: device ``i`` is ``10.<i // 250>.<i % 250 + 1>.2`` talking to
``198.51.100.1`` (a documentation address), so dashboards and alerts still group by source.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from capture.publisher import publish_messages
from phoenix import schema
from phoenix.config import Settings

SYNTHETIC_DST = "198.51.100.1"


def device_id(i: int) -> str:
    return f"dev-{i:04d}"


def device_addr(i: int) -> str:
    return f"10.{(i // 250) % 256}.{i % 250 + 1}.2"


def load_netflow(paths: list[str]) -> pa.Table:
    """Rows of every file, keeping the 39 features and whatever key columns exist."""
    tables = []
    for path in paths:
        p = Path(path)
        table = pacsv.read_csv(p) if p.suffix.lower() in (".csv", ".txt") else pq.read_table(p)
        missing = [f for f in schema.FEATURES if f not in table.column_names]
        if missing:
            raise SystemExit(f"{path}: not an NF-v2 file ({len(missing)} features missing, e.g. {missing[0]})")
        keep = [c for c in (*schema.KEY_COLUMNS, *schema.FEATURES) if c in table.column_names]
        table = table.select(keep)
        casts = [pa.field(c, pa.float64()) if c in schema.FEATURES else table.schema.field(c) for c in keep]
        tables.append(table.cast(pa.schema(casts)))
    return pa.concat_tables(tables, promote_options="default")


@dataclass
class Message:
    device: int
    seq: int
    body: bytes
    records: int


def messages(table: pa.Table, *, devices: int, batch: int, loop: bool, limit: int | None,
             json_reference: bool = False) -> Iterator[Message]:
    """Deal rows to devices, ``batch`` rows per message, each device with its own sequence."""
    seqs = np.zeros(devices, dtype=np.int64)
    has_addr = schema.SRC_ADDR in table.column_names
    sent = msg = 0
    while True:
        for start in range(0, table.num_rows, batch):
            if limit is not None and sent >= limit:
                return
            n = min(batch, table.num_rows - start, (limit - sent) if limit is not None else batch)
            chunk = table.slice(start, n)
            dev = msg % devices
            if not has_addr:
                chunk = chunk.append_column(schema.SRC_ADDR, pa.array([device_addr(dev)] * n)) \
                             .append_column(schema.DST_ADDR, pa.array([SYNTHETIC_DST] * n))
            now = time.time_ns()
            if json_reference:
                body = reference_json(chunk, now)
            else:
                body = schema.encode_request(chunk, kind=schema.KIND_NETFLOW, device_id=device_id(dev),
                                             seq=int(seqs[dev]), send_ts_ns=now)
            yield Message(dev, int(seqs[dev]), body, n)
            seqs[dev] += 1
            sent += n
            msg += 1
        if not loop:
            return


def reference_json(chunk: pa.Table, now_ns: int) -> bytes:
    """The reference system's one-record message (used with ``--batch 1``)."""
    row = chunk.slice(0, 1).to_pylist()[0]
    return json.dumps({
        "send_timestamp": now_ns / 1e9,
        "metadata": {k: row.get(k) for k in schema.KEY_COLUMNS},
        "packet": [row[f] for f in schema.FEATURES],
    }).encode()


def paced(stream: Iterator[Message], rate: float) -> Iterator[Message]:
    """Yield messages at ``rate`` records/s (0: as fast as possible).

    Each message is built, and so time-stamped, only after its wait: the send time is the real one.
    """
    start = time.monotonic()
    sent = 0
    while True:
        if rate > 0:  # pace by records, not messages, so --rate means records/s at any batch size
            ahead = start + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        m = next(stream, None)
        if m is None:
            return
        yield m
        sent += m.records


def replay(paths: list[str], *, devices: int, rate: float, batch: int, limit: int | None, loop: bool,
           settings: Settings, progress: bool = True) -> dict:
    table = load_netflow(paths)
    if table.num_rows == 0:
        raise SystemExit("no rows to replay")
    json_ref = batch == 1
    stream = messages(table, devices=devices, batch=batch, loop=loop, limit=limit, json_reference=json_ref)
    done = publish_messages(settings, paced(stream, rate), device_id=device_id, size=lambda m: m.records,
                            content_type=schema.JSON_CONTENT_TYPE if json_ref else schema.ARROW_CONTENT_TYPE,
                            unit="records", progress=progress)
    return {"records": done.units, "messages": done.messages, "devices": devices, "seconds": done.seconds,
            "records_per_s": done.per_s, "reconnects": done.reconnects}


def register(rsub) -> None:
    """``phoenix replay netflow``, plugged into the ``replay`` group of capture/commands.py."""
    p = rsub.add_parser("netflow", help="replay NF-v2 NetFlow rows (Parquet or CSV) as N devices",
                        description="Publish NetFlow rows as N simulated devices with publisher confirms. "
                        "--batch 1 sends the reference system's one-record JSON messages.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--devices", type=int, default=4, help="number of simulated devices (default 4)")
    p.add_argument("--rate", type=float, default=1000.0, help="records/s across all devices; 0 = as fast as "
                   "confirms allow (default 1000)")
    p.add_argument("--batch", type=int, default=500, help="records per message (default 500)")
    p.add_argument("--limit", type=int, default=None, help="stop after this many records")
    p.add_argument("--loop", action="store_true", help="start over at the end of the files")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.set_defaults(handler=_cli)


def _cli(args) -> int:
    from phoenix.cli import emit_json

    if args.devices < 1 or args.batch < 1:
        raise SystemExit("--devices and --batch must be ≥ 1")
    out = replay(args.files, devices=args.devices, rate=args.rate, batch=args.batch, limit=args.limit,
                 loop=args.loop, settings=Settings.from_env())
    if args.json:
        emit_json(out)
    else:
        print(f"replayed {out['records']:,} records in {out['messages']:,} messages from {out['devices']} "
              f"devices in {out['seconds']} s ({out['records_per_s']:,} records/s)", file=sys.stderr)
    return 0
