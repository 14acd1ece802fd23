"""Classify stage: one model call per batch, verdict table out."""

from __future__ import annotations

import logging
import os
import socket
import time

import numpy as np
import pyarrow as pa

from fl.model import Scorer, load_artifact
from flows.context import verdict_labels
from flows.records import FlowRecords
from phoenix import schema
from phoenix.config import Settings

log = logging.getLogger(__name__)


class Classifier:
    """Loads the artifact once per process; ``__call__`` turns records into verdicts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker = settings.worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self._scorer: Scorer | None = None

    @property
    def scorer(self) -> Scorer:
        # Loaded on first use, inside the worker process, so the dataflow module imports fast.
        if self._scorer is None:
            artifact = load_artifact(self.settings.model_path)
            self._scorer = Scorer(artifact, self.settings.device, self.settings.torch_threads,
                                  self.settings.precision)
            log.info("model %s on %s (%s), threshold %.4f", artifact.version, self._scorer.device,
                     self._scorer.precision, artifact.threshold)
        return self._scorer

    def __call__(self, records: FlowRecords) -> pa.Table:
        scorer = self.scorer
        t0 = time.perf_counter_ns()
        scores = scorer.scores(records.features)
        n = len(records)
        per_record_us = (time.perf_counter_ns() - t0) / 1e3 / max(n, 1)
        now = time.time_ns()
        sent = records.keys.column("send_ts_ns").to_numpy()
        malicious, detector = verdict_labels(scores >= scorer.threshold, records.context)
        cols = {name: records.keys.column(name) for name in records.keys.column_names if name != "send_ts_ns"}
        return pa.table({
            **cols,
            "score": pa.array(scores, pa.float32()),
            "malicious": pa.array(malicious),
            "detector": detector,
            "threshold": pa.array(np.full(n, scorer.threshold, np.float32)),
            "model_version": pa.array([scorer.artifact.version] * n, pa.string()),
            "send_ts_ns": pa.array(sent, pa.int64()),
            "verdict_ts_ns": pa.array(np.full(n, now, np.int64)),
            "latency_ms": pa.array(((now - sent) / 1e6).astype(np.float32)),
            "classify_us": pa.array(np.full(n, per_record_us, np.float32)),
            "worker": pa.array([self.worker] * n, pa.string()),
        }, schema=schema.VERDICT_SCHEMA)


def rebatch(max_records: int):
    """Split merged records into batches of at most ``max_records`` (the model's batch size)."""

    def split(items: list[FlowRecords]) -> list[FlowRecords]:
        if not items:
            return []
        merged = FlowRecords.concat(items)
        return [merged.slice(i, min(i + max_records, len(merged))) for i in range(0, len(merged), max_records)]

    return split
