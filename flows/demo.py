"""``phoenix demo``: dataflow + devices (+ dashboard) on the local broker, with a live summary line."""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from flows.cluster import DataflowCluster
from phoenix.config import SHARED_DATA, Settings
from phoenix.verdicts import VerdictCollector


def demo(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    data = args.data or [str(SHARED_DATA / "nf" / "NF-ToN-IoT-v2-replay-10k.csv")]
    env = {**os.environ, **settings.to_env()}
    children: list[subprocess.Popen] = []
    log_dir = Path("runs/demo")
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        with DataflowCluster(settings, processes=args.processes, recovery=Path("recovery/demo"),
                             log_dir=log_dir) as cluster:
            collector = VerdictCollector(settings)
            if not args.no_dashboard:
                children.append(subprocess.Popen(
                    [sys.executable, "-m", "phoenix", "dashboard", "--port", str(args.port)], env=env,
                    stdout=open(log_dir / "dashboard.log", "ab"), stderr=subprocess.STDOUT))
                print(f"dashboard: http://localhost:{args.port}/app", file=sys.stderr)
            children.append(subprocess.Popen(
                [sys.executable, "-m", "phoenix", "replay", "netflow", *data, "--devices", str(args.devices),
                 "--rate", str(args.rate), "--loop"], env=env,
                stdout=open(log_dir / "devices.log", "ab"), stderr=subprocess.STDOUT))
            print(f"demo: {args.devices} devices at {args.rate:,.0f} records/s → {args.processes} dataflow "
                  f"process(es) on {settings.safe_url}; logs in {log_dir}; Ctrl-C stops", file=sys.stderr)
            _summarise(collector, cluster, args.seconds)
            collector.close()
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0


def _summarise(collector: VerdictCollector, cluster: DataflowCluster, seconds: float | None) -> None:
    """One line, rewritten every second: rate, malicious share, p99 latency over the last 10 s."""
    window: collections.deque = collections.deque()  # (arrival time, verdicts, latencies)
    total = malicious = 0
    start = last_print = time.monotonic()
    while cluster.alive() and (seconds is None or time.monotonic() - start < seconds):
        collector.poll(0.2)
        tables, recv = collector.tables, collector.received_ns
        collector.tables, collector.received_ns = [], []  # keep memory flat: summarise and drop
        now = time.monotonic()
        for r, t in zip(recv, tables, strict=True):
            window.append((now, t.num_rows, (r - t.column("send_ts_ns").to_numpy()) / 1e6))
            total += t.num_rows
            malicious += int(np.count_nonzero(t.column("malicious").to_numpy(zero_copy_only=False)))
        while window and window[0][0] < now - 10:
            window.popleft()
        if now - last_print < 1.0:
            continue
        last_print = now
        span = min(10.0, now - start)
        rate = sum(w[1] for w in window) / span if span > 0 else 0.0
        recent = np.concatenate([w[2] for w in window]) if window else np.empty(0)
        p99 = f"{np.percentile(recent, 99):7.1f} ms" if recent.size else "      - ms"
        share = 100 * malicious / total if total else 0.0
        print(f"\r{rate:10,.0f} verdicts/s | malicious {share:5.1f} % | p99 {p99} | total {total:,}   ",
              end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
