"""Queries over the Parquet archive of verdicts the dataflow writes under ``Settings.archive_dir``.

The archive is read as one :mod:`pyarrow.dataset` (recursively, so date sub-folders work), with
filters pushed down to the Parquet reader: row groups whose statistics cannot match are skipped.
Files still being written (no footer yet) are skipped rather than failing the query.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from phoenix.schema import VERDICT_SCHEMA


@dataclass
class Query:
    start: datetime | None = None
    end: datetime | None = None
    device: str = ""
    address: str = ""        # matches source or destination
    verdict: str = "any"     # "any" | "malicious" | "benign"
    limit: int = 100_000


def _files(archive_dir: str | Path) -> list[str]:
    root = Path(archive_dir)
    if not root.is_dir():
        return []
    # Hidden and underscore-prefixed names are writers' temporaries by convention.
    return sorted(str(p) for p in root.rglob("*.parquet")
                  if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts))


def archive_dataset(archive_dir: str | Path) -> ds.Dataset | None:
    files = _files(archive_dir)
    if not files:
        return None
    readable = []
    for f in files:
        try:
            pq.read_metadata(f)  # a file still being written has no footer yet
            readable.append(f)
        except (OSError, pa.ArrowException):
            continue
    if not readable:
        return None
    return ds.dataset(readable, schema=VERDICT_SCHEMA, format="parquet")


def _ns(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000_000)


def build_filter(q: Query) -> ds.Expression | None:
    conds: list[ds.Expression] = []
    if q.start is not None:
        conds.append(pc.field("verdict_ts_ns") >= _ns(q.start))
    if q.end is not None:
        conds.append(pc.field("verdict_ts_ns") <= _ns(q.end))
    if q.device.strip():
        conds.append(pc.field("device_id") == q.device.strip())
    if q.address.strip():
        a = q.address.strip()
        conds.append((pc.field("src_addr") == a) | (pc.field("dst_addr") == a))
    if q.verdict == "malicious":
        conds.append(pc.field("malicious"))
    elif q.verdict == "benign":
        conds.append(~pc.field("malicious"))
    if not conds:
        return None
    expr = conds[0]
    for c in conds[1:]:
        expr = expr & c
    return expr


def query(archive_dir: str | Path, q: Query) -> tuple[pa.Table, bool]:
    """Rows matching ``q``, newest first, at most ``q.limit``; and whether the limit cut it short."""
    dset = archive_dataset(archive_dir)
    if dset is None:
        return VERDICT_SCHEMA.empty_table(), False
    table = dset.scanner(filter=build_filter(q)).head(q.limit + 1)
    truncated = table.num_rows > q.limit
    table = table.slice(0, q.limit)
    if table.num_rows:
        table = table.sort_by([("verdict_ts_ns", "descending")])
    return table, truncated


def to_csv_bytes(table: pa.Table) -> io.BytesIO:
    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    buf.seek(0)
    return buf


def to_parquet_bytes(table: pa.Table) -> io.BytesIO:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    buf.seek(0)
    return buf
