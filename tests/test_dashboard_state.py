"""The dashboard's aggregates, history queries, model page and command line, without a broker."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dashboards import history
from dashboards.model_info import flatten_metrics, metrics_rows, read_provenance
from dashboards.pages import cards_html, donut_html, recent_html, status_html, top_html
from dashboards.state import Limits, LiveState
from dashboards.synth import verdict_batch
from phoenix.schema import eve_alerts


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_totals_and_tops_match_the_batches() -> None:
    clock = Clock()
    st = LiveState(clock=clock, snapshot_every=0.0)
    a = verdict_batch(300, worker="w-a", malicious_every=4, latency_ms=2.0, classify_us=4.0)
    b = verdict_batch(200, worker="w-b", malicious_every=5, latency_ms=5.0, classify_us=6.0, start_seq=300)
    st.ingest_verdicts(a)
    st.ingest_verdicts(b)
    for body in eve_alerts(pa.concat_tables([a, b])).values():
        st.ingest_alerts(body)
    snap = st.snapshot()
    assert (snap.total, snap.malicious) == (500, 115)
    assert snap.avg_latency_ms == pytest.approx(3.2)
    assert snap.avg_classify_us == pytest.approx(4.8)
    assert snap.workers == [("w-a", 300), ("w-b", 200)]
    assert snap.alerts_total == 115 and len(st.alerts_view()) == 115
    assert snap.recent[0]["verdict_id"] == b.column("verdict_id")[-1].as_py()  # newest first
    both = pa.concat_tables([a, b])
    mal = both.filter(both.column("malicious"))
    counts = {c["values"]: c["counts"] for c in pc.value_counts(mal.column("src_addr")).to_pylist()}
    assert snap.top_sources == sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    assert snap.model_version == "synthetic-1"
    assert snap.devices_tracked == 10


def test_series_buckets_by_second_with_percentiles() -> None:
    clock = Clock(100.2)
    st = LiveState(clock=clock, snapshot_every=0.0)
    st.ingest_verdicts(verdict_batch(1000, latency_ms=1.0))
    st.ingest_verdicts(verdict_batch(1000, latency_ms=9.0))
    clock.t = 101.5
    st.ingest_verdicts(verdict_batch(500, latency_ms=4.0, malicious_every=0))
    clock.t = 106.0  # a silent gap: closed seconds become zeros / gaps, not missing points
    snap = st.snapshot()
    t0 = [p for p in snap.series if p[0] == 100.0][0]
    assert t0[1] == 2000 and 1.0 <= t0[3] <= 9.0 and t0[4] == pytest.approx(9.0)
    t1 = [p for p in snap.series if p[0] == 101.0][0]
    assert t1[1] == 500 and t1[3] == pytest.approx(4.0)
    assert [p[0] for p in snap.series] == sorted(p[0] for p in snap.series)
    assert snap.series[-1][1] == 0.0


def test_memory_stays_bounded_under_many_keys() -> None:
    clock = Clock()
    lim = Limits(recent=20, alerts=50, series_len=30, devices=100, addresses=200, latency_samples=1000)
    st = LiveState(lim, clock=clock, snapshot_every=0.0)
    for i in range(60):
        # Unique devices and addresses in every batch: the capped tables must prune, not grow.
        t = verdict_batch(1000, worker=f"w{i % 3}", devices=1_000_000, start_seq=i * 1000, malicious_every=2)
        t = t.set_column(t.schema.get_field_index("src_addr"), "src_addr",
                         pc.binary_join_element_wise(pa.array([f"s{i}."] * t.num_rows), t.column("seq").cast(pa.string()), ""))
        st.ingest_verdicts(t)
        st.ingest_alerts(b'{"alert": {"severity": 1}}\n' * 100)
        clock.t += 1.0
    snap = st.snapshot()
    assert snap.total == 60_000
    assert len(st.devices) <= 100 and len(st.sources) <= 200 and len(st.targets) <= 200
    assert len(st.recent) == 20 and len(st.alerts_raw) == 50 and len(st.series) == 30
    assert len(st.alerts_view()) == 50
    assert snap.alerts_total == 6_000


def test_bad_alert_lines_are_skipped_not_fatal() -> None:
    st = LiveState(snapshot_every=0.0)
    st.ingest_alerts(b'{"src_ip": "1.2.3.4", "alert": {"severity": 2, "score": 0.9}}\nnot json\n\n')
    assert st.snapshot().alerts_total == 2  # counted as received ...
    view = st.alerts_view()                 # ... but only the parseable one is listed
    assert len(view) == 1 and view[0]["src_ip"] == "1.2.3.4" and view[0]["severity"] == 2
    st.ingest_alerts(b'{"src_ip": "5.6.7.8"}\n')
    assert [a["src_ip"] for a in st.alerts_view()] == ["5.6.7.8", "1.2.3.4"]  # incremental, newest first


def test_snapshot_is_cached_between_ticks() -> None:
    clock = Clock()
    st = LiveState(clock=clock, snapshot_every=0.2)
    s1 = st.snapshot()
    st.ingest_verdicts(verdict_batch(10))
    assert st.snapshot() is s1  # within 200 ms every session gets the same object
    clock.t += 0.25
    assert st.snapshot().total == 10
    st.set_status("disconnected", "gone")
    assert st.snapshot().status == "disconnected"  # status changes skip the cache


def test_html_escapes_wire_data_and_hides_the_password() -> None:
    st = LiveState(broker="amqp://guest:***@localhost:5672/%2F", snapshot_every=0.0)
    t = verdict_batch(4, malicious_every=1)
    t = t.set_column(t.schema.get_field_index("device_id"), "device_id", pa.array(["<script>x</script>"] * 4))
    st.ingest_verdicts(t)
    snap = st.snapshot()
    html = recent_html(snap) + cards_html(snap) + top_html("t", "c", snap.top_sources) + status_html(snap, time.time())
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "guest:guest" not in html
    assert 'class="malicious"' in html
    assert 'data-malicious="4"' in donut_html(0, 4)


@pytest.fixture()
def archive(tmp_path: Path) -> tuple[Path, pa.Table, int]:
    now = time.time_ns()
    t1 = verdict_batch(500, worker="a", devices=5, malicious_every=5, now_ns=now - 7200 * 10**9)
    t2 = verdict_batch(500, worker="b", devices=5, malicious_every=5, now_ns=now, start_seq=500)
    (tmp_path / "2026-12-04").mkdir()
    pq.write_table(t1, tmp_path / "2026-12-04" / "verdicts-a-1.parquet")
    pq.write_table(t2, tmp_path / "verdicts-b-2.parquet")
    (tmp_path / "verdicts-c-3.parquet").write_bytes(b"PAR1 half written")
    (tmp_path / ".verdicts-tmp.parquet").write_bytes(b"junk")
    return tmp_path, pa.concat_tables([t1, t2]), now


def test_history_filters(archive: tuple[Path, pa.Table, int]) -> None:
    root, both, now = archive
    table, truncated = history.query(root, history.Query())
    assert table.num_rows == 1000 and not truncated
    ts = table.column("verdict_ts_ns").to_pylist()
    assert ts == sorted(ts, reverse=True)
    recent = datetime.fromtimestamp(now / 1e9, UTC) - timedelta(hours=1)
    assert history.query(root, history.Query(start=recent))[0].num_rows == 500
    assert history.query(root, history.Query(end=recent))[0].num_rows == 500
    mal = history.query(root, history.Query(verdict="malicious"))[0]
    assert mal.num_rows == int(pc.sum(both.column("malicious")).as_py())
    assert history.query(root, history.Query(verdict="benign"))[0].num_rows == 1000 - mal.num_rows
    dev = history.query(root, history.Query(device="dev-3"))[0]
    assert dev.num_rows == 200 and set(dev.column("device_id").to_pylist()) == {"dev-3"}
    addr = history.query(root, history.Query(address="192.168.1.2"))[0]
    assert addr.num_rows > 0 and all(r == "192.168.1.2" for r in addr.column("dst_addr").to_pylist())
    limited, truncated = history.query(root, history.Query(limit=10))
    assert limited.num_rows == 10 and truncated


def test_history_exports_round_trip(archive: tuple[Path, pa.Table, int]) -> None:
    root, _, _ = archive
    table, _ = history.query(root, history.Query(verdict="malicious"))
    assert pq.read_table(history.to_parquet_bytes(table)).num_rows == table.num_rows
    assert len(history.to_csv_bytes(table).getvalue().splitlines()) == table.num_rows + 1


def test_history_without_archive(tmp_path: Path) -> None:
    table, truncated = history.query(tmp_path / "nothing-here", history.Query())
    assert table.num_rows == 0 and not truncated


def test_model_info_missing_and_bad(tmp_path: Path) -> None:
    info = read_provenance(tmp_path / "missing.pt")
    assert not info["ok"] and "not found" in info["error"]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    info = read_provenance(bad)
    assert not info["ok"] and "cannot read artifact" in info["error"]


def test_model_metrics_table() -> None:
    prov = {"version": "v1", "strategy": "fedavg", "data": list(range(100)),
            "metrics": {"test": {"bot": {"rows": 10, "f1": 0.5, "accuracy": 0.9}}}}
    rows = metrics_rows(prov)
    assert rows == [{"split": "test", "organisation": "bot", "rows": 10, "accuracy": 0.9, "precision": None,
                     "recall": None, "f1": 0.5, "fpr": None}]
    flat = dict(flatten_metrics(prov, max_len=40))
    assert "metrics.test.bot.f1" not in flat and flat["strategy"] == "fedavg" and len(flat["data"]) <= 40


def test_dashboard_command_line() -> None:
    from dashboards.commands import register, serve_command

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["dashboard", "--port", "5111", "--address", "0.0.0.0"])
    cmd = serve_command(args)
    assert cmd[1:4] == ["-m", "panel", "serve"] and cmd[4].endswith("dashboards/app.py")
    assert "--setup" in cmd and cmd[cmd.index("--port") + 1] == "5111"
    assert "0.0.0.0:5111" in cmd
    with pytest.raises(SystemExit):
        serve_command(parser.parse_args(["dashboard", "--basic-auth", "/nonexistent.json"]))


def test_model_info_reads_the_shipped_artifact() -> None:
    from phoenix.config import DEFAULT_MODEL

    if not DEFAULT_MODEL.is_file():
        pytest.skip("models/phoenix.pt not built yet")
    info = read_provenance(DEFAULT_MODEL)
    assert info["ok"], info.get("error")
    assert info["version"] and info["version"] != "unversioned"
    assert 0.0 < info["threshold"] < 1.0
