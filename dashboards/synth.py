"""Synthetic verdict batches in :data:`phoenix.schema.VERDICT_SCHEMA`, for tests and the soak."""

from __future__ import annotations

import time

import numpy as np
import pika
import pyarrow as pa
import pyarrow.compute as pc

from phoenix.schema import (
    ARROW_CONTENT_TYPE,
    NDJSON_CONTENT_TYPE,
    VERDICT_SCHEMA,
    alert_routing_key,
    encode_table,
    eve_alerts,
    verdict_routing_key,
)


def verdict_batch(n: int, *, worker: str = "worker-0", devices: int = 10, malicious_every: int = 4,
                  latency_ms: float = 3.0, classify_us: float = 4.0, start_seq: int = 0,
                  now_ns: int | None = None, model_version: str = "synthetic-1",
                  rng: np.random.Generator | None = None) -> pa.Table:
    """``n`` verdict rows; every ``malicious_every``-th row is malicious (0 = none).

    Addresses are deterministic so tests can predict the top-5 lists: malicious row ``i`` comes
    from ``10.0.0.<i % 7 + 1>`` and targets ``192.168.1.<i % 3 + 1>``.
    """
    now_ns = now_ns if now_ns is not None else time.time_ns()
    idx = np.arange(start_seq, start_seq + n, dtype=np.int64)
    mal = (idx % malicious_every == 0) if malicious_every else np.zeros(n, dtype=bool)
    lat = np.full(n, latency_ms, dtype=np.float32)
    if rng is not None:
        lat = rng.gamma(2.0, latency_ms / 2.0, n).astype(np.float32)
    mal_arr = pa.array(mal)
    src = pc.if_else(mal_arr, _prefixed("10.0.0.", idx % 7 + 1), _prefixed("172.16.0.", idx % 50 + 1))
    dst = pc.if_else(mal_arr, _prefixed("192.168.1.", idx % 3 + 1), _prefixed("192.168.2.", idx % 20 + 1))
    dev = _prefixed("dev-", idx % max(devices, 1))
    cols = {
        "verdict_id": _prefixed(f"{worker}-", idx),
        "device_id": dev,
        "seq": pa.array(idx),
        "src_addr": src,
        "src_port": pa.array((40000 + idx % 20000).astype(np.int32)),
        "dst_addr": dst,
        "dst_port": pa.array(np.where(mal, 23, 443).astype(np.int32)),
        "protocol": pa.array(np.full(n, 6, dtype=np.int16)),
        "first_seen_ns": pa.array(np.full(n, now_ns - 1_000_000_000, dtype=np.int64)),
        "last_seen_ns": pa.array(np.full(n, now_ns - 10_000_000, dtype=np.int64)),
        "score": pa.array(np.where(mal, 0.995, 0.01).astype(np.float32)),
        "malicious": mal_arr,
        "detector": pc.if_else(mal_arr, "model", ""),
        "threshold": pa.array(np.full(n, 0.5, dtype=np.float32)),
        "model_version": pa.array([model_version] * n, pa.string()),
        "send_ts_ns": pa.array(np.full(n, now_ns - int(latency_ms * 1e6), dtype=np.int64)),
        "verdict_ts_ns": pa.array(np.full(n, now_ns, dtype=np.int64)),
        "latency_ms": pa.array(lat),
        "classify_us": pa.array(np.full(n, classify_us, dtype=np.float32)),
        "worker": pa.array([worker] * n, pa.string()),
    }
    return pa.table(cols, schema=VERDICT_SCHEMA)


def _prefixed(prefix: str, numbers: np.ndarray) -> pa.Array:
    # pyarrow string kernels: ~50x faster than numpy's np.char for the soak's 8k-row batches.
    digits = pa.array(numbers).cast(pa.string())
    return pc.binary_join_element_wise(pa.array([prefix] * len(numbers), pa.string()), digits, "")


def publish_batch(ch: pika.adapters.blocking_connection.BlockingChannel, exchange: str, table: pa.Table,
                  *, alerts: bool = True) -> int:
    """Publish a verdict batch the way the dataflow does; returns the number of alert lines sent."""
    worker = table.column("worker")[0].as_py() if table.num_rows else "worker"
    ch.basic_publish(exchange, verdict_routing_key(worker), encode_table(table),
                     pika.BasicProperties(content_type=ARROW_CONTENT_TYPE))
    sent = 0
    if alerts:
        for src, body in eve_alerts(table).items():
            ch.basic_publish(exchange, alert_routing_key(src), body,
                             pika.BasicProperties(content_type=NDJSON_CONTENT_TYPE))
            sent += body.count(b"\n")
    return sent
