"""Soak the dashboard: publish synthetic verdict batches at a fixed rate, sample the server's RSS.

    nice python -m dashboards.soak --rate 10000 --minutes 30 --browser

Starts its own ``panel serve`` on a free port with a unique exchange (unless ``--pid`` points at
a running server), optionally keeps one headless Chromium session open on the page (so session
rendering is part of what is measured), publishes ``--rate`` verdicts/s in ``--batch``-row
Arrow batches plus their EVE alerts, and prints one JSON line per sample and a JSON summary:
RSS at start, after the warm-up, at the end, its maximum, and the growth after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pika
import pika.exceptions
import psutil
import pyarrow as pa

from dashboards.synth import verdict_batch
from phoenix.config import Settings
from phoenix.schema import (
    ARROW_CONTENT_TYPE,
    NDJSON_CONTENT_TYPE,
    alert_routing_key,
    encode_table,
    eve_alerts,
    verdict_routing_key,
)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, env: dict[str, str], log_path: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "panel", "serve", str(ROOT / "dashboards" / "app.py"), "--port", str(port),
           "--address", "127.0.0.1", "--allow-websocket-origin", f"127.0.0.1:{port}",
           "--setup", str(ROOT / "dashboards" / "setup.py")]
    # A file, not a pipe: an undrained pipe fills up and blocks the server's logging (and its loop).
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child for its lifetime
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def wait_http(port: int, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"dashboard did not listen on {port}")


class Publisher(threading.Thread):
    """Paced publisher of pre-built batches (re-stamped with the current time each send)."""

    def __init__(self, settings: Settings, rate: float, batch: int, workers: int, devices: int) -> None:
        super().__init__(daemon=True, name="soak-publisher")
        self.settings, self.rate, self.batch = settings, rate, batch
        rng = np.random.default_rng(7)
        self.templates = [verdict_batch(batch, worker=f"worker-{i % workers}", devices=devices,
                                        start_seq=i * batch, rng=rng) for i in range(max(workers, 4))]
        # EVE alerts are prebuilt per template: building them is the dataflow's cost, not ours.
        self.alerts = [eve_alerts(t) for t in self.templates]
        self.sent = 0
        self.alert_lines = 0
        self.reconnects = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        # The shared broker may restart under us (other test suites do that): reconnect, and
        # restart the pacing clock afterwards so the outage is not followed by a burst.
        while not self.stop_event.is_set():
            try:
                self._publish_until_stopped()
            except pika.exceptions.AMQPError:
                self.reconnects += 1
                self.stop_event.wait(1.0)

    def _publish_until_stopped(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.settings.amqp_url))
        ch = conn.channel()
        ex = self.settings.alerts_exchange
        ch.exchange_declare(ex, exchange_type="topic", durable=True)
        t0 = time.monotonic() - self.sent / self.rate
        i = self.sent // max(self.batch, 1)
        while not self.stop_event.is_set():
            tpl = self.templates[i % len(self.templates)]
            now = time.time_ns()
            n = tpl.num_rows
            lat = tpl.column("latency_ms").to_numpy()
            table = tpl.set_column(tpl.schema.get_field_index("verdict_ts_ns"), "verdict_ts_ns",
                                   pa.array(np.full(n, now, dtype=np.int64)))
            table = table.set_column(table.schema.get_field_index("send_ts_ns"), "send_ts_ns",
                                     pa.array(now - (lat * 1e6).astype(np.int64)))
            worker = table.column("worker")[0].as_py()
            ch.basic_publish(ex, verdict_routing_key(worker), encode_table(table),
                             pika.BasicProperties(content_type=ARROW_CONTENT_TYPE))
            for src, body in self.alerts[i % len(self.alerts)].items():
                ch.basic_publish(ex, alert_routing_key(src), body,
                                 pika.BasicProperties(content_type=NDJSON_CONTENT_TYPE))
                self.alert_lines += body.count(b"\n")
            self.sent += n
            i += 1
            # Pace against the schedule, not the previous send, so the average rate is exact.
            ahead = t0 + self.sent / self.rate - time.monotonic()
            if ahead > 0:
                self.stop_event.wait(ahead)
            conn.process_data_events(0)
        conn.close()


# Runs in the page: polls the "total" card every 50 ms (through Panel's shadow roots) and
# records when its text changes, so the summary can say how often the browser really updated.
WATCH_JS = """() => {
  const deep = (sel, root) => {
    const hit = root.querySelector(sel);
    if (hit) return hit;
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) { const f = deep(sel, el.shadowRoot); if (f) return f; }
    }
    return null;
  };
  const w = window.__phx = {changes: [], last: null, el: null};
  setInterval(() => {
    if (!w.el || !w.el.isConnected) w.el = deep('.phx-card[data-key="total"] .phx-value', document);
    const txt = w.el ? w.el.textContent : null;
    if (txt !== w.last) { w.last = txt; w.changes.push(performance.now()); if (w.changes.length > 5000) w.changes.shift(); }
  }, 50);
}"""

UPDATES_JS = """(since_ms) => {
  const now = performance.now();
  const c = window.__phx.changes.filter(t => t >= now - since_ms);
  let gap = 0;
  for (let i = 1; i < c.length; i++) gap = Math.max(gap, c[i] - c[i - 1]);
  return {updates: c.length, window_s: since_ms / 1000, max_gap_ms: Math.round(gap)};
}"""


def card_total(page: object) -> int | None:
    try:
        txt = page.locator('.phx-card[data-key="total"] .phx-value').inner_text(timeout=3000)  # type: ignore[attr-defined]
        return int(txt.replace(",", ""))
    except Exception:  # noqa: BLE001 - a sample without the number is still a memory sample
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dashboards.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=10_000, help="verdicts per second (default 10000)")
    ap.add_argument("--batch", type=int, default=8192, help="rows per verdict message (default 8192)")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline sample")
    ap.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--browser", action="store_true", help="keep a headless Chromium session on the page")
    ap.add_argument("--pid", type=int, help="measure this running server instead of starting one")
    ap.add_argument("--out", help="also write the summary JSON here")
    ap.add_argument("--screenshot", help="with --browser: save the page here at the end")
    ap.add_argument("--server-log", default="/tmp/phoenix-dashboard-soak.log", help="server output goes here")
    args = ap.parse_args(argv)

    exchange = f"phoenix.soak.{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PHOENIX_ALERTS_EXCHANGE=exchange)
    settings = Settings.from_env(alerts_exchange=exchange)
    server = None
    port = free_port()
    if args.pid:
        proc = psutil.Process(args.pid)
        settings = Settings.from_env()
    else:
        server = start_server(port, env, args.server_log)
        wait_http(port)
        proc = psutil.Process(server.pid)
    pw = browser = page = None
    samples: list[dict] = []
    pub = Publisher(settings, args.rate, args.batch, args.workers, args.devices)
    try:
        rss0 = proc.memory_info().rss
        if args.browser and server is not None:
            from playwright.sync_api import sync_playwright

            pw = sync_playwright().start()
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(f"http://127.0.0.1:{port}/app")
            page.wait_for_selector(".phx-card", timeout=60_000)
            page.evaluate(WATCH_JS)
        pub.start()
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        baseline = None
        next_sample = t0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                rss = proc.memory_info().rss
                s = {"t_s": round(now - t0, 1), "rss_mb": round(rss / 2**20, 1), "published": pub.sent,
                     "cpu_s": round(sum(proc.cpu_times()[:2]), 1)}
                if page is not None:
                    s["page_total"] = card_total(page)
                if baseline is None and now - t0 >= args.warmup:
                    baseline = s
                samples.append(s)
                print(json.dumps(s), flush=True)
                next_sample += args.every
            if page is not None:
                page.wait_for_timeout(500)  # keeps Playwright's event loop serviced
            else:
                time.sleep(0.5)
        elapsed = time.monotonic() - t0
        updates = page.evaluate(UPDATES_JS, min(60.0, elapsed - 1.0) * 1000) if page is not None else None
        pub.stop_event.set()
        pub.join(10)
        last = {"t_s": round(elapsed, 1), "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                "published": pub.sent, "cpu_s": round(sum(proc.cpu_times()[:2]), 1)}
        if page is not None:
            time.sleep(2)
            last["page_total"] = card_total(page)
            if args.screenshot:
                page.screenshot(path=args.screenshot, full_page=True)
        samples.append(last)
        baseline = baseline or samples[0]
        summary = {
            "minutes": round(elapsed / 60, 2), "rate_target": args.rate,
            "rate_achieved": round(pub.sent / elapsed, 1), "batch": args.batch, "verdicts": pub.sent,
            "alert_lines": pub.alert_lines, "browser_session": page is not None,
            "rss_start_mb": round(rss0 / 2**20, 1), "rss_baseline_mb": baseline["rss_mb"],
            "baseline_at_s": baseline["t_s"], "rss_end_mb": last["rss_mb"],
            "rss_max_mb": max(s["rss_mb"] for s in samples),
            "growth_after_warmup_mb": round(last["rss_mb"] - baseline["rss_mb"], 1),
            "server_cpu_s": last["cpu_s"], "page_total_end": last.get("page_total"),
            "publisher_reconnects": pub.reconnects,
            "page_updates_last_window": updates if page is not None else None,
        }
        print(json.dumps({"summary": summary}), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps({"summary": summary, "samples": samples}, indent=1))
    finally:
        pub.stop_event.set()
        if browser is not None:
            browser.close()
        if pw is not None:
            pw.stop()
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        try:
            conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
            if not args.pid:
                conn.channel().exchange_delete(exchange)
            conn.close()
        except Exception:  # noqa: BLE001 - cleanup is best effort
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
