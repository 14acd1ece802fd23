"""``phoenix bench``: the pipeline against the local broker, the model alone, and the reference design.

Every figure comes from a run in this process: nothing is estimated. Each part runs after a
warm-up, on its own unique exchanges and streams, which are deleted afterwards.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np

from capture.replay_netflow import load_netflow, replay
from fl.model import Scorer, load_artifact
from phoenix import broker, schema
from phoenix.config import SHARED_DATA, Settings
from phoenix.verdicts import VerdictCollector

DEFAULT_DATA = SHARED_DATA / "nf" / "NF-ToN-IoT-v2-replay-10k.csv"


def _say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _unique(settings: Settings, tmp: Path) -> Settings:
    tag = f"bench{uuid.uuid4().hex[:8]}"
    return replace(settings, requests_exchange=f"{tag}.requests", requests_stream_prefix=f"{tag}.requests",
                   alerts_exchange=f"{tag}.alerts", verdicts_stream=f"{tag}.verdicts",
                   deadletter_exchange=f"{tag}.deadletter", deadletter_queue=f"{tag}.deadletter",
                   archive_dir=str(tmp / "archive"), stream_max_bytes=1_000_000_000)


def model_only(settings: Settings, features: np.ndarray, seconds: float = 3.0) -> float:
    """Records/s of preprocessing + model on batches of the dataflow's batch size, in-process."""
    scorer = Scorer(load_artifact(settings.model_path), settings.device, settings.torch_threads,
                    settings.precision)
    batch = settings.batch_max_records
    reps = -(-batch // len(features))
    x = np.tile(features, (reps, 1))[:batch]
    for _ in range(5):
        scorer.scores(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        scorer.scores(x)
        n += batch
    return n / (time.perf_counter() - start)


def _publish(files: list[str], settings: Settings, *, records: int, rate: float, batch: int, devices: int) -> dict:
    return replay(files, devices=devices, rate=rate, batch=batch, limit=records, loop=True, settings=settings,
                  progress=False)


def end_to_end(settings: Settings, files: list[str], *, records: int, batch: int, devices: int) -> dict:
    """First publish to last verdict received, devices publishing as fast as confirms allow."""
    collector = VerdictCollector(settings)
    pub: dict = {}
    start_ns = time.time_ns()
    t = threading.Thread(target=lambda: pub.update(
        _publish(files, settings, records=records, rate=0, batch=batch, devices=devices)))
    t.start()
    ok = collector.wait_for(records, timeout=300)
    t.join()
    collector.close()
    if not ok:
        raise RuntimeError(f"only {collector.rows} of {records} verdicts arrived")
    elapsed = (collector.received_ns[-1] - start_ns) / 1e9
    return {"records": records, "seconds": round(elapsed, 3), "records_per_s": round(records / elapsed, 1),
            "publish_records_per_s": pub.get("records_per_s")}


def latency(settings: Settings, files: list[str], *, rate: float, seconds: float, batch: int,
            devices: int) -> dict:
    """Per-record latency, device send timestamp → verdict received, at a fixed offered load."""
    collector = VerdictCollector(settings)
    records = int(rate * seconds)
    t = threading.Thread(target=lambda: _publish(files, settings, records=records, rate=rate, batch=batch,
                                                 devices=devices))
    t.start()
    ok = collector.wait_for(records, timeout=seconds + 120)
    t.join()
    collector.close()
    if not ok:
        raise RuntimeError(f"only {collector.rows} of {records} verdicts arrived")
    lat = np.concatenate([
        (recv - tbl.column("send_ts_ns").to_numpy()) / 1e6
        for recv, tbl in zip(collector.received_ns, collector.tables, strict=True)
    ])
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    # The dataflow's own stamp (send → classified) separates pipeline time from delivery time.
    at_classify = np.concatenate([t.column("latency_ms").to_numpy() for t in collector.tables])
    return {"offered_records_per_s": rate, "records": int(lat.size),
            "classified_p50": round(float(np.percentile(at_classify, 50)), 2),
            "classified_p99": round(float(np.percentile(at_classify, 99)), 2),
            "p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2),
            "max": round(float(lat.max()), 2)}


def reference_style(settings: Settings, table, *, messages: int) -> float:
    """The reference design rebuilt in Python: one JSON record per message on a classic queue,
    prefetch 10, one-record inference, one confirmed alert per record, then ack."""
    scorer = Scorer(load_artifact(settings.model_path), settings.device, settings.torch_threads,
                    settings.precision)
    tag = f"bench{uuid.uuid4().hex[:8]}"
    queue, alerts = f"{tag}.requests_queue", f"{tag}.alerts_queue"
    conn = broker.connect(settings)
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    ch.queue_declare(alerts, durable=True)
    rows = table.slice(0, min(messages, table.num_rows)).to_pylist()
    for i in range(messages):  # pre-fill, as the reference's throughput mode does
        row = rows[i % len(rows)]
        ch.basic_publish("", queue, json.dumps({
            "send_timestamp": int(time.time()),
            "metadata": {k: row.get(k) for k in schema.KEY_COLUMNS},
            "packet": [row[f] for f in schema.FEATURES]}).encode())
    ch.basic_qos(prefetch_count=10)
    out = conn.channel()
    out.confirm_delivery()
    done = 0

    def on_message(c, method, props, body):
        nonlocal done
        doc = json.loads(body)
        t0 = time.perf_counter()
        score = float(scorer.scores(np.asarray([doc["packet"]], dtype=np.float64))[0])
        alert = {"metadata": doc["metadata"], "classification_time": time.perf_counter() - t0,
                 "latency": time.time() - doc["send_timestamp"], "worker_name": "worker-bench",
                 "is_malicious": score >= scorer.threshold, "timestamp": time.time()}
        out.basic_publish("", alerts, json.dumps(alert).encode())
        c.basic_ack(method.delivery_tag)
        done += 1
        if done == messages:
            c.stop_consuming()

    ch.basic_consume(queue, on_message)
    start = time.perf_counter()
    ch.start_consuming()
    elapsed = time.perf_counter() - start
    ch.queue_delete(queue)
    ch.queue_delete(alerts)
    conn.close()
    return messages / elapsed


def run(settings: Settings, *, data: list[str], records: int, rate: float, latency_seconds: float,
        processes: int, batch: int, devices: int, reference_messages: int) -> dict:
    from flows.cluster import DataflowCluster

    table = load_netflow(data)
    features = schema.netflow_matrix(table)
    _say(f"model only: batch {settings.batch_max_records}, {settings.torch_threads} thread(s) as in each "
         f"dataflow process, then {processes} thread(s): the CPU budget of all {processes} processes")
    model_rps = model_only(settings, features)
    model_all_rps = model_only(replace(settings, torch_threads=processes), features) if processes > 1 else model_rps
    with tempfile.TemporaryDirectory(prefix="phoenix-bench-") as tmp:
        s = _unique(settings, Path(tmp))
        try:
            with DataflowCluster(s, processes=processes, log_dir=Path(tmp)):
                _say(f"warm-up through {processes} dataflow process(es)")
                end_to_end(s, data, records=min(records, 50_000), batch=batch, devices=devices)
                _say(f"end to end: {records:,} records")
                e2e = end_to_end(s, data, records=records, batch=batch, devices=devices)
                _say(f"latency at {rate:,.0f} records/s for {latency_seconds:.0f} s")
                lat = latency(s, data, rate=rate, seconds=latency_seconds, batch=max(1, int(rate / 200)),
                              devices=devices)
        finally:
            broker.delete_topology(s)
    _say(f"reference style: {reference_messages:,} one-record messages")
    ref_rps = reference_style(settings, table, messages=reference_messages)
    import torch

    return {
        "records": records,
        "records_per_s": e2e["records_per_s"],
        "latency_ms": {"p50": lat["p50"], "p95": lat["p95"], "p99": lat["p99"]},
        "latency_offered_records_per_s": rate,
        "model_only_records_per_s": round(model_rps, 1),
        "reference_style_records_per_s": round(ref_rps, 1),
        "vs_model_only": round(e2e["records_per_s"] / model_rps, 3),
        "model_only_all_cores_records_per_s": round(model_all_rps, 1),
        "vs_model_only_all_cores": round(e2e["records_per_s"] / model_all_rps, 3),
        "vs_reference_style": round(e2e["records_per_s"] / ref_rps, 1),
        "processes": processes,
        "batch_max_records": settings.batch_max_records,
        "message_records": batch,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": settings.torch_threads,
        "precision": settings.precision,
        "end_to_end": e2e,
        "latency": lat,
    }


def table_text(r: dict) -> str:
    rows = [
        ("end to end (records/s)", f"{r['records_per_s']:,.0f}"),
        ("model only, same batch (records/s)", f"{r['model_only_records_per_s']:,.0f}"),
        ("reference style (records/s)", f"{r['reference_style_records_per_s']:,.0f}"),
        ("vs model only", f"{r['vs_model_only']:.2f}"),
        (f"model only, {r['processes']} threads (records/s)", f"{r['model_only_all_cores_records_per_s']:,.0f}"),
        ("vs model only, all cores", f"{r['vs_model_only_all_cores']:.2f}"),
        ("vs reference style", f"{r['vs_reference_style']:.1f}x"),
        (f"latency p50/p95/p99 at {r['latency_offered_records_per_s']:,.0f} rec/s (ms)",
         f"{r['latency_ms']['p50']} / {r['latency_ms']['p95']} / {r['latency_ms']['p99']}"),
    ]
    for key, label in (("packets_per_s", "pcap replay → verdicts (packets/s)"),
                       ("meter_packets_per_s", "decode + meter offline (packets/s)")):
        if key in r:
            rows.append((label, f"{r[key]:,.0f}"))
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)

