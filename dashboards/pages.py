"""The dashboard's pages, built once per browser session.

A session never touches the broker or raw batches: its periodic callback reads the shared
:class:`~dashboards.state.Snapshot` (rebuilt at most every 200 ms for all sessions together)
and pushes only what changed, inside one ``hold()`` so each tick reaches the browser as one
batched websocket message. Tabs that are not visible are not refreshed.
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource, FactorRange, NumeralTickFormatter
from bokeh.plotting import figure
from holoviews.streams import Buffer

from dashboards import history
from dashboards.consumer import shared
from dashboards.model_info import METRIC_COLUMNS, flatten_metrics, metrics_rows, model_info
from dashboards.state import Snapshot
from phoenix.config import Settings

log = logging.getLogger("phoenix.dashboard")

BENIGN, MALICIOUS = "#2e9e5b", "#d6332f"
SERIES_COLUMNS = ["t", "verdicts", "alerts", "p50", "p99"]

CSS = """
.phx-cards { display: flex; flex-wrap: wrap; gap: 10px; }
.phx-card { flex: 1 1 150px; border: 1px solid #ddd; border-radius: 8px; padding: 8px 12px; background: #fff; }
.phx-card .phx-label { font-size: 12px; color: #666; text-transform: uppercase; letter-spacing: .04em; }
.phx-card .phx-value { font-size: 26px; font-weight: 600; margin-top: 2px; }
.phx-card.bad .phx-value { color: #d6332f; }
table.phx-table { border-collapse: collapse; width: 100%; font-size: 13px; font-family: monospace; }
table.phx-table th { text-align: left; border-bottom: 2px solid #ccc; padding: 3px 6px; font-family: sans-serif; }
table.phx-table td { border-bottom: 1px solid #eee; padding: 3px 6px; white-space: nowrap; }
table.phx-table tr.malicious td { background: #fde2e1; color: #9b1c1c; }
.phx-status { font-weight: 600; padding: 3px 10px; border-radius: 12px; font-size: 14px; }
.phx-status.connected { background: #2e9e5b; color: #fff; }
.phx-status.connecting { background: #e0a800; color: #000; }
.phx-status.disconnected, .phx-status.stopped { background: #d6332f; color: #fff; }
.phx-broker { color: #eee; font-size: 12px; margin-left: 8px; }
.phx-donut { font-family: sans-serif; }
.phx-donut-title { font-weight: 600; font-size: 13px; margin-bottom: 4px; }
.phx-legend { font-size: 12px; }
.phx-top ol { margin: 4px 0; padding-left: 22px; font-family: monospace; }
"""


def _esc(x: object) -> str:
    # Addresses and device ids come off the wire; never trust them as HTML.
    return html.escape(str(x), quote=True)


def _ts(ns: int) -> str:
    if not ns:
        return ""
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%H:%M:%S.%f")[:-3]


def _fmt_int(n: float) -> str:
    return f"{int(n):,}"


def refresh_ms() -> int:
    """Session update period: 2 to 10 updates per second (PHOENIX_DASHBOARD_REFRESH_MS)."""
    try:
        ms = int(os.environ.get("PHOENIX_DASHBOARD_REFRESH_MS", "500"))
    except ValueError:
        ms = 500
    return min(max(ms, 100), 500)


# --------------------------------------------------------------------------- HTML fragments

def status_html(snap: Snapshot, now: float) -> str:
    since = max(0, int(now - snap.status_since))
    detail = f" ({_esc(snap.status_detail)})" if snap.status != "connected" and snap.status_detail else ""
    label = {"connected": "connected", "connecting": "connecting…"}.get(snap.status, snap.status)
    return (f'<span class="phx-status {_esc(snap.status)}" data-status="{_esc(snap.status)}" '
            f'title="since {since}s{detail}">broker {label}</span>'
            f'<span class="phx-broker">{_esc(snap.broker)}{detail if snap.status != "connected" else ""}</span>')


def cards_html(snap: Snapshot) -> str:
    cards = [
        ("total", "Total classified", _fmt_int(snap.total), ""),
        ("malicious", "Total malicious", _fmt_int(snap.malicious), "bad" if snap.malicious else ""),
        ("share", "Malicious share", f"{100 * snap.malicious_share:.2f} %", ""),
        ("latency", "Avg latency", f"{snap.avg_latency_ms:.2f} ms", ""),
        ("classify", "Avg classification", f"{snap.avg_classify_us:.2f} µs", ""),
        ("rate", "Verdicts / s (10 s)", _fmt_int(snap.verdicts_per_s), ""),
        ("alerts", "Alerts", _fmt_int(snap.alerts_total), "bad" if snap.alerts_total else ""),
    ]
    return '<div class="phx-cards">' + "".join(
        f'<div class="phx-card {cls}" data-key="{key}"><div class="phx-label">{label}</div>'
        f'<div class="phx-value">{value}</div></div>' for key, label, value, cls in cards) + "</div>"


def recent_html(snap: Snapshot, rows: int = 12) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("time (UTC)", "device", "source", "destination", "score",
                                              "latency ms", "worker", "verdict"))
    body = []
    for r in snap.recent[:rows]:
        mal = bool(r["malicious"])
        body.append(
            f'<tr class="{"malicious" if mal else "benign"}" data-verdict-id="{_esc(r["verdict_id"])}">'
            f"<td>{_ts(r['verdict_ts_ns'])}</td><td>{_esc(r['device_id'])}</td>"
            f"<td>{_esc(r['src_addr'])}:{_esc(r['src_port'])}</td><td>{_esc(r['dst_addr'])}:{_esc(r['dst_port'])}</td>"
            f"<td>{float(r['score'] or 0):.3f}</td><td>{float(r['latency_ms'] or 0):.2f}</td>"
            f"<td>{_esc(r['worker'])}</td><td>{'MALICIOUS' if mal else 'benign'}</td></tr>")
    if not body:
        body.append('<tr><td colspan="8">no verdicts yet</td></tr>')
    return f'<table class="phx-table phx-recent"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def top_html(title: str, css: str, items: list[tuple[str, int]]) -> str:
    lis = "".join(f'<li data-addr="{_esc(a)}">{_esc(a)} — {_fmt_int(n)}</li>' for a, n in items) or "<li>none yet</li>"
    return f'<div class="phx-top {css}"><b>{_esc(title)}</b><ol>{lis}</ol></div>'


def model_html(info: dict[str, Any] | None, live_version: str) -> str:
    live = f"<p>Model version in live verdicts: <code>{_esc(live_version or '—')}</code></p>"
    if info is None:
        return "<p>Loading the model artifact…</p>" + live
    if not info["ok"]:
        return (f'<p class="phx-model-missing"><b>{_esc(info.get("error", "unavailable"))}</b>: '
                f"<code>{_esc(info['path'])}</code></p>" + live)
    prov = info["provenance"]
    rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in flatten_metrics(prov))
    mrows = metrics_rows(prov)
    mhead = "".join(f"<th>{c}</th>" for c in ("split", "organisation", *METRIC_COLUMNS))
    mbody = "".join(
        "<tr>" + f"<td>{_esc(r['split'])}</td><td>{_esc(r['organisation'])}</td>" + "".join(
            f"<td>{_num(r[c])}</td>" for c in METRIC_COLUMNS) + "</tr>" for r in mrows)
    metrics = (f'<h4>Training metrics</h4><table class="phx-table phx-metrics"><thead><tr>{mhead}</tr></thead>'
               f"<tbody>{mbody}</tbody></table>") if mrows else "<p>No metrics in the artifact's provenance.</p>"
    warn = ""
    if live_version and info["version"] and live_version != info["version"]:
        warn = "<p><b>Note:</b> the dataflow serves a different version than this artifact.</p>"
    return (f'<p>Artifact <code>{_esc(info["path"])}</code>, version <code class="phx-model-version">'
            f'{_esc(info["version"])}</code>, strategy <code>{_esc(prov.get("strategy", "?"))}</code>, '
            f'decision threshold {info["threshold"]:.4f}</p>' + live + warn + metrics +
            f'<h4>Provenance</h4><table class="phx-table phx-model"><thead><tr><th>field</th><th>value</th></tr>'
            f"</thead><tbody>{rows}</tbody></table>")


def _num(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return _esc("" if v is None else v)


# --------------------------------------------------------------------------- plots

def _workers_bar() -> tuple[figure, ColumnDataSource]:
    src = ColumnDataSource({"worker": [], "verdicts": []})
    fig = figure(height=280, x_range=FactorRange(factors=[]), title="Classifications per dataflow worker",
                 toolbar_location=None, tools="hover", tooltips="@worker: @verdicts{0,0}",
                 sizing_mode="stretch_width")
    fig.vbar(x="worker", top="verdicts", width=0.7, source=src, color="#3b73b9")
    fig.y_range.start = 0
    fig.yaxis.formatter = NumeralTickFormatter(format="0,0")
    fig.xaxis.major_label_orientation = 0.5
    fig.xgrid.visible = False
    return fig, src


def donut_html(benign: int, malicious: int) -> str:
    """Benign vs malicious as an SVG ring (plain markup: crisp, cheap to update, easy to test)."""
    total = benign + malicious
    r, circ = 70.0, 2 * np.pi * 70.0
    mal_len = circ * malicious / total if total else 0.0
    ring = "#2e9e5b" if total else "#cccccc"
    share = f"{100 * malicious / total:.1f}%" if total else "–"
    return (
        f'<div class="phx-donut" data-benign="{benign}" data-malicious="{malicious}">'
        '<div class="phx-donut-title">Benign vs malicious</div>'
        '<svg viewBox="0 0 200 200" width="210" height="210" role="img">'
        f'<circle cx="100" cy="100" r="{r}" fill="none" stroke="{ring}" stroke-width="34"/>'
        f'<circle cx="100" cy="100" r="{r}" fill="none" stroke="{MALICIOUS}" stroke-width="34" '
        f'stroke-dasharray="{mal_len:.2f} {circ:.2f}" transform="rotate(-90 100 100)"/>'
        f'<text x="100" y="98" text-anchor="middle" font-size="24" font-weight="600">{share}</text>'
        '<text x="100" y="120" text-anchor="middle" font-size="12" fill="#666">malicious</text></svg>'
        f'<div class="phx-legend"><span style="color:{BENIGN}">■</span> benign {_fmt_int(benign)} '
        f'&nbsp; <span style="color:{MALICIOUS}">■</span> malicious {_fmt_int(malicious)}</div></div>')


def _series_frame(rows: list[tuple[float, float, float, float, float]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    df["t"] = pd.to_datetime(df["t"], unit="s")
    return df


# --------------------------------------------------------------------------- the session

class Dashboard:
    """Widgets and the update loop of one browser session."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.consumer = shared(self.settings)
        self.state = self.consumer.state
        self._last_version = -1
        self._last_t = 0.0
        self._last_workers: list[tuple[str, int]] | None = None
        self._last_donut = (-1, -1)
        self._slow_tick = 0.0
        self._history_table = None
        self._last_error = 0.0

        self.status = pn.pane.HTML("", sizing_mode="fixed", width=700, height=30, stylesheets=[CSS])
        self.cards = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        self.donut = pn.pane.HTML(donut_html(0, 0), width=260, stylesheets=[CSS])
        self.workers_fig, self.workers_src = _workers_bar()
        self.series_buf = Buffer(_series_frame([]), length=self.state.limits.series_len, index=False)
        rates = hv.DynamicMap(
            lambda data: (hv.Curve(data, "t", "verdicts", label="verdicts/s")
                          * hv.Curve(data, "t", "alerts", label="alerts/s")),
            streams=[self.series_buf]).opts(
            hv.opts.Curve(height=260, responsive=True, tools=["hover"], framewise=True, xlabel="time (UTC)",
                          ylabel="per second", yformatter="%d"),
            hv.opts.Overlay(title="Verdicts and alerts per second (1 s buckets)", legend_position="top_left"))
        latency = hv.DynamicMap(
            # Points as well as lines: seconds without verdicts are gaps (NaN), and an isolated
            # second would otherwise draw nothing.
            lambda data: (hv.Curve(data, "t", ("p50", "latency ms"), label="p50")
                          * hv.Scatter(data, "t", ("p50", "latency ms"), label="p50").opts(size=3)
                          * hv.Curve(data, "t", ("p99", "latency ms"), label="p99")
                          * hv.Scatter(data, "t", ("p99", "latency ms"), label="p99").opts(size=3)),
            streams=[self.series_buf]).opts(
            hv.opts.Curve(height=260, responsive=True, tools=["hover"], framewise=True, xlabel="time (UTC)"),
            hv.opts.Scatter(responsive=True, framewise=True),
            hv.opts.Overlay(title="End-to-end latency p50 / p99 (ms)", legend_position="top_left"))
        self.recent = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        self.top_sources = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        self.top_targets = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS])

        overview = pn.Column(
            self.cards,
            pn.Row(self.donut, pn.pane.Bokeh(self.workers_fig, sizing_mode="stretch_width"),
                   sizing_mode="stretch_width"),
            pn.Row(pn.pane.HoloViews(rates, sizing_mode="stretch_width"),
                   pn.pane.HoloViews(latency, sizing_mode="stretch_width"), sizing_mode="stretch_width"),
            pn.Row(pn.Column("### Most recent verdicts", self.recent, sizing_mode="stretch_width"),
                   pn.Column("### Top malicious sources", self.top_sources,
                             "### Top targets", self.top_targets, width=300),
                   sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

        # Devices: bounded to the most recently seen 200 (the state tracks a capped set).
        self.devices = pn.widgets.Tabulator(
            pd.DataFrame(columns=["device_id", "last_seen", "seconds_ago", "verdicts", "malicious",
                                  "malicious_share", "records_per_s"]),
            pagination="remote", page_size=20, disabled=True, show_index=False, sizing_mode="stretch_width")
        self.devices_note = pn.pane.HTML("")
        devices_page = pn.Column(self.devices_note, self.devices, sizing_mode="stretch_width")

        # Alerts: filters applied in Python on the bounded recent-alerts list.
        self.alert_search = pn.widgets.TextInput(name="Search (address, device, verdict id)", placeholder="10.0.0.1")
        self.alert_severity = pn.widgets.Select(name="Severity", options=["any", "1", "2"], value="any")
        self.alert_min_score = pn.widgets.FloatSlider(name="Minimum score", start=0.0, end=1.0, step=0.01, value=0.0)
        self.alerts = pn.widgets.Tabulator(pd.DataFrame(columns=list(_alert_columns())), pagination="remote",
                                           page_size=20, disabled=True, show_index=False,
                                           sizing_mode="stretch_width")
        self.alerts_note = pn.pane.HTML("")
        for w in (self.alert_search, self.alert_severity, self.alert_min_score):
            w.param.watch(lambda _e: self._update_alerts(self.state.snapshot(), force=True), "value")
        alerts_page = pn.Column(pn.Row(self.alert_search, self.alert_severity, self.alert_min_score),
                                self.alerts_note, self.alerts, sizing_mode="stretch_width")

        history_page = self._history_page()

        self.model = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=[CSS])
        model_page = pn.Column(self.model, sizing_mode="stretch_width")

        self.tabs = pn.Tabs(("Overview", overview), ("Devices", devices_page), ("Alerts", alerts_page),
                            ("History", history_page), ("Model", model_page),
                            dynamic=True, sizing_mode="stretch_width")
        self.tabs.param.watch(lambda _e: self.tick(force=True), "active")

    # ------------------------------------------------------------------ history page

    def _history_page(self) -> pn.Column:
        now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        self.h_range = pn.widgets.DatetimeRangePicker(name="Time range (UTC)",
                                                      value=(now - timedelta(days=1), now + timedelta(hours=1)))
        self.h_device = pn.widgets.TextInput(name="Device", placeholder="any")
        self.h_address = pn.widgets.TextInput(name="Address (source or destination)", placeholder="any")
        self.h_verdict = pn.widgets.Select(name="Verdict", options=["any", "malicious", "benign"], value="any")
        self.h_limit = pn.widgets.IntInput(name="Row limit", value=100_000, start=1, end=1_000_000)
        self.h_search = pn.widgets.Button(name="Search", button_type="primary")
        self.h_search.on_click(self._run_history)
        self.h_summary = pn.pane.HTML(f"<p>Archive: <code>{_esc(self.settings.archive_dir)}</code></p>")
        self.h_table = pn.widgets.Tabulator(pd.DataFrame(), pagination="remote", page_size=25, disabled=True,
                                            show_index=False, sizing_mode="stretch_width")
        self.h_csv = pn.widgets.FileDownload(callback=lambda: history.to_csv_bytes(self._history_export()),
                                             filename="verdicts.csv", label="Download CSV", disabled=True)
        self.h_parquet = pn.widgets.FileDownload(
            callback=lambda: history.to_parquet_bytes(self._history_export()),
            filename="verdicts.parquet", label="Download Parquet", disabled=True)
        return pn.Column(pn.Row(self.h_range, self.h_device, self.h_address, self.h_verdict, self.h_limit),
                         pn.Row(self.h_search, self.h_csv, self.h_parquet), self.h_summary, self.h_table,
                         sizing_mode="stretch_width")

    def history_query(self) -> history.Query:
        start, end = self.h_range.value or (None, None)
        return history.Query(start=start.replace(tzinfo=UTC) if start else None,
                             end=end.replace(tzinfo=UTC) if end else None,
                             device=self.h_device.value or "", address=self.h_address.value or "",
                             verdict=self.h_verdict.value, limit=int(self.h_limit.value or 100_000))

    def _history_export(self) -> Any:
        import pyarrow as pa

        return self._history_table if self._history_table is not None else pa.table({})

    async def _run_history(self, _event: object = None) -> None:
        q = self.history_query()
        self.h_search.loading = True
        t0 = time.perf_counter()
        try:
            # Off the event loop: a big scan must not stall other sessions' live updates.
            table, truncated = await asyncio.to_thread(history.query, self.settings.archive_dir, q)
        except Exception as exc:  # noqa: BLE001 - show the error on the page, keep the session
            self.h_summary.object = f'<p class="phx-history-error">Query failed: {_esc(exc)}</p>'
            return
        finally:
            self.h_search.loading = False
        self._history_table = table
        df = table.to_pandas()
        for col in ("verdict_ts_ns", "send_ts_ns", "first_seen_ns", "last_seen_ns"):
            if col in df:
                df[col.removesuffix("_ns")] = pd.to_datetime(df.pop(col), unit="ns")
        self.h_table.value = df
        n_mal = int(df["malicious"].sum()) if "malicious" in df else 0
        more = f" (limit reached: first {q.limit:,} shown)" if truncated else ""
        self.h_summary.object = (f'<p class="phx-history-summary" data-rows="{table.num_rows}">'
                                 f"{table.num_rows:,} verdicts, {n_mal:,} malicious{more}; "
                                 f"query took {1e3 * (time.perf_counter() - t0):.0f} ms</p>")
        self.h_csv.disabled = self.h_parquet.disabled = table.num_rows == 0

    # ------------------------------------------------------------------ updates

    def tick(self, force: bool = False) -> None:
        """One update of the visible page; errors are logged (rate-limited), never fatal."""
        try:
            self._tick(force)
        except Exception:  # noqa: BLE001 - a bad tick must not stop the next one
            now = time.time()
            if now - self._last_error > 60:
                self._last_error = now
                log.exception("dashboard update failed")

    def _tick(self, force: bool = False) -> None:
        snap = self.state.snapshot()
        now = time.time()
        with pn.io.hold():
            self.status.object = status_html(snap, now)
            if snap.version != self._last_version or force:
                self._last_version = snap.version
                active = self.tabs.active
                if active == 0:
                    self._update_overview(snap)
                elif active == 1:
                    self._update_devices(snap, now)
                elif active == 2:
                    self._update_alerts(snap)
            if self.tabs.active == 0 and snap.series and snap.series[-1][0] > self._last_t:
                self._push_series(snap)
            if self.tabs.active == 4 and (force or now - self._slow_tick > 2.0):
                self._slow_tick = now
                self.model.object = model_html(model_info(self.settings.model_path), snap.model_version)
            elif self.tabs.active == 1 and now - self._slow_tick > 1.0:
                self._slow_tick = now  # "seconds ago" keeps moving even when no data arrives
                self._update_devices(snap, now)

    def _update_overview(self, snap: Snapshot) -> None:
        self.cards.object = cards_html(snap)
        donut = (snap.total - snap.malicious, snap.malicious)
        if donut != self._last_donut:
            self._last_donut = donut
            self.donut.object = donut_html(*donut)
        workers = sorted(snap.workers, key=lambda kv: -kv[1])[:20]
        if workers != self._last_workers:
            self._last_workers = workers
            self.workers_fig.x_range.factors = [w for w, _ in workers]
            self.workers_src.data = {"worker": [w for w, _ in workers], "verdicts": [n for _, n in workers]}
        self.recent.object = recent_html(snap)
        self.top_sources.object = top_html("by malicious flows sent", "phx-top-sources", snap.top_sources)
        self.top_targets.object = top_html("by malicious flows received", "phx-top-targets", snap.top_targets)
        self._push_series(snap)

    def _push_series(self, snap: Snapshot) -> None:
        new = [p for p in snap.series if p[0] > self._last_t]
        if new:
            self._last_t = new[-1][0]
            self.series_buf.send(_series_frame(new))

    def _update_devices(self, snap: Snapshot, now: float) -> None:
        rows = [{
            "device_id": d["device_id"],
            "last_seen": _ts(d["last_seen_ns"]),
            "seconds_ago": round(max(0.0, now - d["last_seen_ns"] / 1e9), 1) if d["last_seen_ns"] else None,
            "verdicts": d["verdicts"],
            "malicious": d["malicious"],
            "malicious_share": round(d["malicious"] / d["verdicts"], 4) if d["verdicts"] else 0.0,
            "records_per_s": round(d["rate"], 1),
        } for d in snap.devices]
        self.devices.value = pd.DataFrame(rows, columns=list(self.devices.value.columns))
        self.devices_note.object = (f"<p>{snap.devices_tracked:,} devices tracked (at most "
                                    f"{self.state.limits.devices:,}; the 200 most recently seen are listed)</p>")

    def _update_alerts(self, snap: Snapshot, force: bool = False) -> None:
        if not force and self.tabs.active != 2:
            return
        df = pd.DataFrame(self.state.alerts_view(), columns=list(_alert_columns()))
        total = len(df)
        q = (self.alert_search.value or "").strip()
        if q:
            mask = np.zeros(len(df), dtype=bool)
            for col in ("src_ip", "dest_ip", "device_id", "verdict_id"):
                mask |= df[col].str.contains(q, regex=False, na=False).to_numpy()
            df = df[mask]
        if self.alert_severity.value != "any":
            df = df[df["severity"] == int(self.alert_severity.value)]
        if self.alert_min_score.value > 0:
            df = df[df["score"] >= self.alert_min_score.value]
        self.alerts.value = df.reset_index(drop=True)
        self.alerts_note.object = (f'<p class="phx-alerts-note" data-shown="{len(df)}">{len(df):,} of the '
                                   f"{total:,} most recent alerts shown ({snap.alerts_total:,} received "
                                   f"since the dashboard started)</p>")

    # ------------------------------------------------------------------ page

    def view(self) -> pn.template.BaseTemplate:
        template = pn.template.FastListTemplate(
            title="PhoenixFL · live traffic classification", header=[self.status], main=[self.tabs],
            accent="#3b73b9", header_background="#1f3b5c", raw_css=[CSS], theme_toggle=False)
        self.tick(force=True)
        # Start ticking only once the browser's websocket is up: a session that never connects
        # (curl, health checks) would otherwise make HoloViews re-schedule its refresh forever.
        pn.state.onload(lambda: pn.state.add_periodic_callback(self.tick, period=refresh_ms()))
        return template


def _alert_columns() -> tuple[str, ...]:
    from dashboards.state import ALERT_FIELDS

    return ALERT_FIELDS
