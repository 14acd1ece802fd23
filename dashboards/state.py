"""Live aggregates of the verdict and alert streams, shared by every browser session.

The consumer thread calls :meth:`LiveState.ingest_verdicts` / :meth:`LiveState.ingest_alerts`
once per AMQP message; sessions call :meth:`LiveState.snapshot` from their periodic callback.
All per-row work happens at ingest, vectorized with pyarrow over the whole batch (an 8k-row
batch costs a few milliseconds), so rendering only copies small, already-reduced values.

Memory is bounded by construction, whatever the stream rate or duration:

* totals are scalars; the time series is a ``deque(maxlen=series_len)`` of one-second points;
* recent verdicts and alerts are ``deque(maxlen=...)``;
* per-worker, per-device and per-address tables are dicts capped at a fixed size. Addresses
  are pruned to their heaviest half when full (approximate heavy hitters: the top five stay
  exact unless the cap is far too small for the traffic); devices evict the least recently seen.
* latency percentiles use at most ``latency_samples`` values per second (strided sample).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RECENT_COLUMNS = ("verdict_ts_ns", "device_id", "src_addr", "src_port", "dst_addr", "dst_port",
                  "protocol", "score", "malicious", "latency_ms", "worker", "verdict_id")
ALERT_FIELDS = ("timestamp", "severity", "detector", "score", "src_ip", "src_port", "dest_ip", "dest_port",
                "proto", "device_id", "model_version", "latency_ms", "verdict_id")


@dataclass
class Limits:
    """Caps that keep the server's memory flat over hours of streaming."""

    recent: int = 50            # most recent verdict rows kept
    alerts: int = 2000          # most recent alert lines kept (raw; parsed only when viewed)
    series_len: int = 900       # one-second points: 15 minutes of history in the charts
    workers: int = 256
    devices: int = 2000
    addresses: int = 20_000     # per counter (sources, targets)
    latency_samples: int = 20_000  # per one-second bucket


@dataclass(frozen=True)
class Snapshot:
    """An immutable view for rendering; every session reads the same object."""

    taken: float
    version: int
    status: str
    status_detail: str
    status_since: float
    broker: str
    total: int
    malicious: int
    avg_latency_ms: float
    avg_classify_us: float
    alerts_total: int
    verdicts_per_s: float
    model_version: str
    workers: list[tuple[str, int]]
    recent: list[dict[str, Any]]
    top_sources: list[tuple[str, int]]
    top_targets: list[tuple[str, int]]
    series: list[tuple[float, float, float, float, float]]  # t, verdicts/s, alerts/s, p50, p99
    devices: list[dict[str, Any]]
    messages: int
    bad_messages: int
    devices_tracked: int

    @property
    def malicious_share(self) -> float:
        return self.malicious / self.total if self.total else 0.0


@dataclass
class _Device:
    last_seen_ns: int = 0
    total: int = 0
    malicious: int = 0
    win_start: float = 0.0
    win_count: int = 0
    rate: float = 0.0


@dataclass
class _Bucket:
    second: int = 0
    verdicts: int = 0
    alerts: int = 0
    latencies: list[np.ndarray] = field(default_factory=list)
    n_lat: int = 0


class LiveState:
    """Thread-safe running aggregates; one instance per server process."""

    def __init__(self, limits: Limits | None = None, *, broker: str = "", snapshot_every: float = 0.2,
                 clock: Any = time.time) -> None:
        self.limits = limits or Limits()
        self.broker = broker
        self._clock = clock
        self._snapshot_every = snapshot_every
        self._lock = threading.Lock()
        self._version = 0
        self._snap: Snapshot | None = None
        self.status = "connecting"
        self.status_detail = ""
        self.status_since = clock()
        self.total = 0
        self.malicious = 0
        self.latency_sum = 0.0
        self.latency_n = 0
        self.classify_sum = 0.0
        self.alerts_total = 0
        self.messages = 0
        self.bad_messages = 0
        self.model_version = ""
        self.workers: dict[str, int] = {}
        self.sources: dict[str, int] = {}
        self.targets: dict[str, int] = {}
        self.devices: dict[str, _Device] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=self.limits.recent)
        self.alerts_raw: deque[bytes] = deque(maxlen=self.limits.alerts)
        self._alert_seq = 0            # raw lines appended so far
        self._parsed: deque[dict[str, Any]] = deque(maxlen=self.limits.alerts)
        self._parsed_seq = 0
        self._parse_lock = threading.Lock()
        self.series: deque[tuple[float, float, float, float, float]] = deque(maxlen=self.limits.series_len)
        self._bucket = _Bucket(second=int(clock()))

    # ------------------------------------------------------------------ ingest (consumer thread)

    def set_status(self, status: str, detail: str = "") -> None:
        with self._lock:
            if status != self.status:
                self.status_since = self._clock()
            self.status = status
            self.status_detail = detail
            self._version += 1
            self._snap = None  # status changes show at the next tick, not after the cache ages

    def ingest_verdicts(self, table: pa.Table) -> None:
        """Fold one verdict batch (VERDICT_SCHEMA) into the aggregates."""
        n = table.num_rows
        if n == 0:
            return
        mal_mask = table.column("malicious").fill_null(False)
        n_mal = int(pc.sum(mal_mask).as_py() or 0)
        lat = table.column("latency_ms").to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        lat = lat[np.isfinite(lat)]
        lat_sum, lat_n = float(lat.sum()), int(lat.size)
        cls = pc.sum(table.column("classify_us")).as_py() or 0.0
        workers = pc.value_counts(table.column("worker")).to_pylist()
        mal = table.filter(mal_mask) if n_mal else None
        srcs = pc.value_counts(mal.column("src_addr")).to_pylist() if mal is not None else []
        dsts = pc.value_counts(mal.column("dst_addr")).to_pylist() if mal is not None else []
        dev = table.group_by("device_id").aggregate([
            ("malicious", "sum"), ("malicious", "count"), ("verdict_ts_ns", "max")]).to_pydict()
        tail = table.slice(max(0, n - self.limits.recent)).select(list(RECENT_COLUMNS)).to_pylist()
        version = table.column("model_version")[n - 1].as_py() or ""
        # Strided sample so one second's percentile costs O(latency_samples), not O(rate).
        if lat.size > self.limits.latency_samples:
            lat = lat[:: lat.size // self.limits.latency_samples + 1]

        now = self._clock()
        with self._lock:
            self._roll(now)
            self.messages += 1
            self.total += n
            self.malicious += n_mal
            self.latency_sum += lat_sum
            self.latency_n += lat_n
            self.classify_sum += float(cls)
            self.model_version = version or self.model_version
            self._count(self.workers, workers, self.limits.workers)
            self._count(self.sources, srcs, self.limits.addresses)
            self._count(self.targets, dsts, self.limits.addresses)
            self._devices(dev, now)
            self.recent.extend(tail)
            b = self._bucket
            b.verdicts += n
            if lat.size and b.n_lat < self.limits.latency_samples:
                b.latencies.append(lat)
                b.n_lat += lat.size
            self._version += 1

    def ingest_alerts(self, body: bytes) -> None:
        """Count one NDJSON alert message (one EVE event per line) and keep its newest lines raw.

        Parsing waits until someone opens the Alerts page (:meth:`alerts_view`): real traffic can
        be mostly malicious, and ``json.loads`` on every line at 100k lines/s would eat a core.
        """
        lines = body.split(b"\n")
        n = len(lines) - lines.count(b"")  # non-empty lines, counted in C
        tail = [line for line in lines[-self.limits.alerts:] if line]
        now = self._clock()
        with self._lock:
            self._roll(now)
            self.messages += 1
            self.alerts_total += n
            self._bucket.alerts += n
            self.alerts_raw.extend(tail)
            self._alert_seq += len(tail)
            self._version += 1

    def alerts_view(self) -> list[dict[str, Any]]:
        """The most recent alerts, parsed, newest first (only lines not parsed before are parsed)."""
        with self._parse_lock:
            with self._lock:
                seq = self._alert_seq
                fresh = min(seq - self._parsed_seq, len(self.alerts_raw))
                raw = list(self.alerts_raw)[len(self.alerts_raw) - fresh:] if fresh else []
            for line in raw:
                try:
                    self._parsed.append(_flatten_alert(json.loads(line)))
                except (ValueError, TypeError, AttributeError):
                    continue  # a malformed line stays counted but is not listed
            self._parsed_seq = seq
            return list(self._parsed)[::-1]

    def count_bad(self) -> None:
        with self._lock:
            self.bad_messages += 1
            self._version += 1

    # ------------------------------------------------------------------ render side

    def snapshot(self) -> Snapshot:
        """The latest aggregates, rebuilt at most every ``snapshot_every`` seconds.

        Every session's callback lands here; the cache makes N sessions cost one rebuild.
        """
        now = self._clock()
        snap = self._snap
        if snap is not None and now - snap.taken < self._snapshot_every:
            return snap
        with self._lock:
            self._roll(now)
            snap = self._snap
            if snap is not None and (snap.version == self._version or now - snap.taken < self._snapshot_every):
                if snap.version == self._version and now - snap.taken >= 1.0:
                    snap = self._build(now)  # refresh rates and "seconds ago" even when idle
                    self._snap = snap
                return snap
            snap = self._build(now)
            self._snap = snap
            return snap

    def _build(self, now: float) -> Snapshot:
        top = self.limits.recent
        devs = sorted(self.devices.items(), key=lambda kv: kv[1].last_seen_ns, reverse=True)[:200]
        # Batches arrive in whole messages, so one-second counts alternate; the card averages 10 s.
        window = list(self.series)[-10:]
        rate = sum(p[1] for p in window) / len(window) if window else 0.0
        return Snapshot(
            taken=now, version=self._version, status=self.status, status_detail=self.status_detail,
            status_since=self.status_since, broker=self.broker,
            total=self.total, malicious=self.malicious,
            avg_latency_ms=self.latency_sum / self.latency_n if self.latency_n else 0.0,
            avg_classify_us=self.classify_sum / self.total if self.total else 0.0,
            alerts_total=self.alerts_total,
            verdicts_per_s=rate,
            model_version=self.model_version,
            workers=sorted(self.workers.items()),
            recent=list(self.recent)[-top:][::-1],
            top_sources=_top(self.sources, 5), top_targets=_top(self.targets, 5),
            series=list(self.series),
            devices=[{"device_id": k, "last_seen_ns": d.last_seen_ns, "verdicts": d.total,
                      "malicious": d.malicious, "rate": _device_rate(d, now)} for k, d in devs],
            messages=self.messages, bad_messages=self.bad_messages, devices_tracked=len(self.devices),
        )

    # ------------------------------------------------------------------ helpers (lock held)

    def _roll(self, now: float) -> None:
        """Close finished one-second buckets into the series (empty seconds become zeros)."""
        sec = int(now)
        b = self._bucket
        if sec <= b.second:
            return
        if b.latencies:
            lat = np.concatenate(b.latencies)
            p50, p99 = (float(x) for x in np.percentile(lat, [50, 99]))
        else:
            p50 = p99 = float("nan")
        self.series.append((float(b.second), float(b.verdicts), float(b.alerts), p50, p99))
        # A long idle gap adds at most a few explicit zeros; the chart draws the rest as a line.
        for s in range(max(b.second + 1, sec - 3), sec):
            self.series.append((float(s), 0.0, 0.0, float("nan"), float("nan")))
        self._bucket = _Bucket(second=sec)

    @staticmethod
    def _count(counter: dict[str, int], counts: list[dict[str, Any]], cap: int) -> None:
        for item in counts:
            key = item["values"] or ""
            counter[key] = counter.get(key, 0) + int(item["counts"])
        if len(counter) > cap:
            keep = sorted(counter.items(), key=lambda kv: kv[1], reverse=True)[: cap // 2]
            counter.clear()
            counter.update(keep)

    def _devices(self, dev: dict[str, list], now: float) -> None:
        for key, mal, cnt, last in zip(dev["device_id"], dev["malicious_sum"], dev["malicious_count"],
                                       dev["verdict_ts_ns_max"], strict=True):
            key = key or ""
            d = self.devices.get(key)
            if d is None:
                d = self.devices[key] = _Device(win_start=now)
            d.total += int(cnt)
            d.malicious += int(mal or 0)
            d.last_seen_ns = max(d.last_seen_ns, int(last or 0))
            d.win_count += int(cnt)
            if now - d.win_start >= 5.0:
                d.rate = d.win_count / (now - d.win_start)
                d.win_start, d.win_count = now, 0
        if len(self.devices) > self.limits.devices:
            # Evict the longest-silent tenth in one sort: amortized O(log n) per new device even
            # when every batch brings unseen ids.
            keep = sorted(self.devices.items(), key=lambda kv: kv[1].last_seen_ns,
                          reverse=True)[: self.limits.devices * 9 // 10]
            self.devices = dict(keep)


def _device_rate(d: _Device, now: float) -> float:
    """Records/s over the last few seconds; decays to zero when a device goes silent."""
    span = now - d.win_start
    if span >= 5.0:
        return d.win_count / span
    if d.rate == 0.0 and span > 0.5:
        return d.win_count / span
    return d.rate


def _top(counter: dict[str, int], k: int) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def _flatten_alert(doc: dict[str, Any]) -> dict[str, Any]:
    alert = doc.get("alert") or {}
    return {
        "timestamp": str(doc.get("timestamp", "")),
        "severity": int(alert.get("severity", 0) or 0),
        "detector": str(alert.get("detector", "model") or ""),
        "score": float(alert.get("score", 0.0) or 0.0),
        "src_ip": str(doc.get("src_ip", "")),
        "src_port": int(doc.get("src_port", 0) or 0),
        "dest_ip": str(doc.get("dest_ip", "")),
        "dest_port": int(doc.get("dest_port", 0) or 0),
        "proto": int(doc.get("proto", 0) or 0),
        "device_id": str(doc.get("device_id", "")),
        "model_version": str(alert.get("model_version", "")),
        "latency_ms": float(doc.get("latency_ms", 0.0) or 0.0),
        "verdict_id": str(doc.get("verdict_id", "")),
    }
