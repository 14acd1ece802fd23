"""Packet figures for ``phoenix bench``: offline decode + meter, and pcap replay → verdicts.

* :func:`meter_packets_per_s`: decode + meter on a large synthetic pcap, per core: packets over
  this process's CPU time, so other work on a shared machine does not distort it (wall-clock
  packets/s alongside).
* :func:`end_to_end_packets_per_s`: ``replay pcap`` devices → RabbitMQ → ``flows.classify`` →
  verdicts, first publish to last verdict, on unique topology deleted afterwards.
* :func:`figures`: both, as ``{"packets_per_s", "meter_packets_per_s", ...}``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from capture.pcapio import DecodeStats, iter_capture
from capture.synth import write_bench_pcap


def meter_packets_per_s(packets: int = 1_000_000, packets_per_flow: int = 10,
                        path: str | Path | None = None, repeat: int = 1) -> dict:
    """Decode + meter ``packets`` synthetic packets; returns figures for ``phoenix bench``.

    ``{"meter_packets_per_s": <packets per CPU-second, decode + meter>,
       "decode_packets_per_s": <decode only, per CPU-second>, "wall_packets_per_s": ...,
       "packets", "flows", "peak_rss_mb", "pcap_bytes"}``. The best of ``repeat`` runs counts.
    """
    from flows.meter import FlowMeter

    with tempfile.TemporaryDirectory(prefix="phoenix-bench-") as tmp:
        p = Path(path) if path else Path(tmp) / "bench.pcap"
        if not p.exists():
            write_bench_pcap(p, packets, packets_per_flow)
        best: dict = {}
        for _ in range(max(1, repeat)):
            c0, w0 = time.process_time(), time.perf_counter()
            n = 0
            for b in iter_capture(p, stats=DecodeStats()):
                n += len(b)
            dec_cpu = time.process_time() - c0

            c0, w0 = time.process_time(), time.perf_counter()
            meter = FlowMeter()
            flows = 0
            for b in iter_capture(p, stats=DecodeStats()):
                for r in meter.add(b):
                    flows += len(r)
            last = meter.flush()
            flows += len(last) if last is not None else 0
            cpu = time.process_time() - c0
            wall = time.perf_counter() - w0
            run = {
                "meter_packets_per_s": round(n / cpu) if cpu else 0,
                "decode_packets_per_s": round(n / dec_cpu) if dec_cpu else 0,
                "wall_packets_per_s": round(n / wall) if wall else 0,
                "packets": n,
                "flows": flows,
                "pcap_bytes": p.stat().st_size,
            }
            if run["meter_packets_per_s"] > best.get("meter_packets_per_s", -1):
                best = run
        best["peak_rss_mb"] = _peak_rss_mb()
        return best


def end_to_end_packets_per_s(settings: object | None = None, *, packets: int = 1_000_000, processes: int = 2,
                             devices: int = 4, batch: int = 4096, idle_timeout_s: float = 2.0) -> dict:
    """pcap replay → verdicts through the local broker, first publish to last verdict.

    The meter's idle timeout is shortened (default 2 s) so flows close soon after the replay
    ends; ``packets_per_s`` includes that wait, ``packets_per_s_without_wait`` subtracts it
    (idle timeout + 0.5 s close grace).
    """
    import os
    import threading
    import uuid
    from dataclasses import replace

    from capture.replay_pcap import replay
    from flows.cluster import DataflowCluster
    from phoenix import broker
    from phoenix.config import Settings
    from phoenix.verdicts import VerdictCollector

    base = settings if isinstance(settings, Settings) else Settings.from_env()
    saved = {k: os.environ.get(k) for k in ("PHOENIX_METER_IDLE_TIMEOUT_S", "PHOENIX_METER_CLOSE_GRACE_S")}
    os.environ["PHOENIX_METER_IDLE_TIMEOUT_S"] = str(idle_timeout_s)  # inherited by the dataflow processes
    os.environ["PHOENIX_METER_CLOSE_GRACE_S"] = "0.5"
    try:
        with tempfile.TemporaryDirectory(prefix="phoenix-pktbench-") as tmp:
            tag = f"pktbench{uuid.uuid4().hex[:8]}"
            s = replace(base, requests_exchange=f"{tag}.requests", requests_stream_prefix=f"{tag}.requests",
                        alerts_exchange=f"{tag}.alerts", verdicts_stream=f"{tag}.verdicts",
                        deadletter_exchange=f"{tag}.deadletter", deadletter_queue=f"{tag}.deadletter",
                        archive_dir=str(Path(tmp) / "archive"), stream_max_bytes=1_000_000_000)
            warm, main = Path(tmp) / "warm.pcap", Path(tmp) / "main.pcap"
            write_bench_pcap(warm, 50_000, 10, seed=3)
            info = write_bench_pcap(main, packets, 10, seed=4, start_s=1.8e9)
            try:
                with DataflowCluster(s, processes=processes, log_dir=Path(tmp)) as cluster:
                    col = VerdictCollector(s)
                    replay([str(warm)], devices=devices, speed=0, rate=0, batch=batch, loop=False, limit=None,
                           settings=s, progress=False)
                    if not col.wait_for(5_000, timeout=180, alive=cluster.alive):
                        raise RuntimeError(f"warm-up: {col.rows} of 5000 verdicts")
                    col.close()
                    col = VerdictCollector(s)
                    pub: dict = {}
                    start = time.time_ns()
                    t = threading.Thread(target=lambda: pub.update(replay(
                        [str(main)], devices=devices, speed=0, rate=0, batch=batch, loop=False, limit=None,
                        settings=s, progress=False)))
                    t.start()
                    ok = col.wait_for(info["flows"], timeout=600, alive=cluster.alive)
                    t.join()
                    col.poll(1.0)
                    rows, last = col.rows, col.received_ns[-1] if col.rows else time.time_ns()
                    col.close()
                    if not ok:
                        raise RuntimeError(f"only {rows} of {info['flows']} flow verdicts arrived")
            finally:
                broker.delete_topology(s)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    secs = (last - start) / 1e9
    wait = idle_timeout_s + 0.5
    return {"packets": info["packets"], "flows": info["flows"], "verdicts": rows, "seconds": round(secs, 3),
            "packets_per_s": round(info["packets"] / secs, 1),
            "packets_per_s_without_wait": round(info["packets"] / max(1e-3, secs - wait), 1),
            "publish_packets_per_s": pub.get("packets_per_s"), "processes": processes, "devices": devices}


def figures(settings: object | None = None, *, packets: int = 1_000_000, processes: int = 2) -> dict:
    """What ``phoenix bench --packets`` adds: ``packets_per_s`` (pcap replay → verdicts) and
    ``meter_packets_per_s`` (offline decode + meter per core), with their details."""
    meter = meter_packets_per_s(packets)
    e2e = end_to_end_packets_per_s(settings, packets=packets, processes=processes)
    return {"packets_per_s": e2e["packets_per_s"], "meter_packets_per_s": meter["meter_packets_per_s"],
            "packets_end_to_end": e2e, "meter": meter}


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
