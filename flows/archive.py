"""Parquet archive of verdicts, one writer per worker, rolled by age and size.

A file is written as ``*.parquet.partial`` and renamed when it rolls, so readers (the
dashboard's history page, ``pyarrow.dataset``) only ever see complete files. Files are laid out
by day: ``<dir>/date=YYYY-MM-DD/verdicts-<worker>-<start>.parquet``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from phoenix import schema
from phoenix.config import Settings


class _ArchivePartition(StatelessSinkPartition):
    def __init__(self, root: Path, worker: str, roll_seconds: float, roll_rows: int) -> None:
        self.root = root
        self.worker = worker
        self.roll_seconds = roll_seconds
        self.roll_rows = roll_rows
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._opened = 0.0
        self._rows = 0

    def _open(self) -> None:
        now = time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        folder = self.root / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        self._path = folder / f"verdicts-{self.worker}-{stamp}-{os.getpid()}.parquet"
        self._writer = pq.ParquetWriter(str(self._path) + ".partial", schema.VERDICT_SCHEMA, compression="zstd")
        self._opened = now
        self._rows = 0

    def write_batch(self, items: list[pa.Table]) -> None:
        for table in items:
            if self._writer is None:
                self._open()
            self._writer.write_table(table)
            self._rows += table.num_rows
        if self._writer is not None and (self._rows >= self.roll_rows
                                         or time.time() - self._opened >= self.roll_seconds):
            self._roll()

    def _roll(self) -> None:
        self._writer.close()
        os.replace(str(self._path) + ".partial", self._path)
        self._writer = None

    def close(self) -> None:
        if self._writer is not None:
            self._roll()


class ParquetArchiveSink(DynamicSink):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ArchivePartition:
        return _ArchivePartition(Path(self.settings.archive_dir), f"w{worker_index}",
                                 self.settings.archive_roll_seconds, self.settings.archive_roll_rows)
