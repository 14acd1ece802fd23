"""Context detectors (flows/context.py): scans, sweeps and floods judged across flows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.context import (
    HOST_SCAN,
    PORT_SCAN,
    SYN_FLOOD,
    ContextConfig,
    ContextDetector,
    context_stage,
    probe_mask,
)
from flows.records import KEY_SCHEMA, FlowRecords
from phoenix.schema import FEATURES

F = {n: i for i, n in enumerate(FEATURES)}
S = 1_000_000_000
SYN_ONLY = {"PROTOCOL": 6, "CLIENT_TCP_FLAGS": 0x02, "TCP_FLAGS": 0x02, "IN_PKTS": 1}
SYN_RST = {"PROTOCOL": 6, "CLIENT_TCP_FLAGS": 0x06, "SERVER_TCP_FLAGS": 0x12, "IN_PKTS": 2, "OUT_PKTS": 1}
ESTABLISHED = {"PROTOCOL": 6, "CLIENT_TCP_FLAGS": 0x1B, "SERVER_TCP_FLAGS": 0x1B, "IN_PKTS": 6, "OUT_PKTS": 5}
UDP_SILENT = {"PROTOCOL": 17, "IN_PKTS": 1}
UDP_ANSWERED = {"PROTOCOL": 17, "IN_PKTS": 1, "OUT_PKTS": 1}
PING = {"PROTOCOL": 1, "ICMP_TYPE": 8 * 256, "IN_PKTS": 1}


def flows(rows: list[tuple[str, str, int, float, dict]], tag: str = "") -> FlowRecords:
    """rows: (src, dst, dst_port, start seconds, features)."""
    n = len(rows)
    feats = np.zeros((n, len(FEATURES)))
    for i, (*_, f) in enumerate(rows):
        for name, v in f.items():
            feats[i, F[name]] = v
    start = np.array([int(r[3] * S) for r in rows], np.int64)
    keys = pa.table({
        "verdict_id": [f"{tag}{i}:{r[0]}-{r[1]}:{r[2]}@{r[3]}" for i, r in enumerate(rows)],
        "device_id": ["d"] * n, "seq": np.full(n, -1), "src_addr": [r[0] for r in rows],
        "src_port": pa.array(np.full(n, 40000), pa.int32()), "dst_addr": [r[1] for r in rows],
        "dst_port": pa.array([r[2] for r in rows], pa.int32()),
        "protocol": pa.array(feats[:, F["PROTOCOL"]].astype(np.int16)),
        "first_seen_ns": start, "last_seen_ns": start, "send_ts_ns": start,
    }, schema=KEY_SCHEMA)
    return FlowRecords(keys, feats)


def judged(parts: list[FlowRecords]) -> dict[str, int]:
    return {vid: int(c) for p in parts
            for vid, c in zip(p.keys.column("verdict_id").to_pylist(), p.context, strict=True)}


def test_probes_are_unestablished_attempts():
    rec = flows([("a", "b", 1, 0, SYN_ONLY), ("a", "b", 2, 0, SYN_RST), ("a", "b", 3, 0, ESTABLISHED),
                 ("a", "b", 4, 0, UDP_SILENT), ("a", "b", 5, 0, UDP_ANSWERED), ("a", "b", 0, 0, PING)])
    assert probe_mask(rec.features).tolist() == [True, True, False, True, False, True]


def test_port_scan_flags_every_probe_once_the_threshold_is_crossed():
    det = ContextDetector(ContextConfig(port_scan_ports=15))
    out = []
    for port in range(1, 21):  # one probe per batch: the first 14 wait in the detector
        out += det.add(flows([("10.0.0.9", "10.0.0.1", port, port * 0.01, SYN_RST)]), now_ns=0)
    # an established flow from the scanner passes straight through, unflagged
    out += det.add(flows([("10.0.0.9", "10.0.0.1", 80, 0.3, ESTABLISHED)], tag="e"), now_ns=0)
    got = judged(out)
    assert len(got) == 21 and det.held == 0
    assert sum(1 for v in got.values() if v == PORT_SCAN) == 20
    assert got["e0:10.0.0.9-10.0.0.1:80@0.3"] == 0


def test_below_threshold_probes_leave_unflagged_after_the_hold():
    det = ContextDetector(ContextConfig(port_scan_ports=15, hold_s=5))
    assert det.add(flows([("10.0.0.9", "10.0.0.1", p, 0, SYN_ONLY) for p in range(14)]), now_ns=0) == []
    assert det.held == 14 and det.next_expiry_ns() == 5 * S
    assert det.expire(4 * S) == []
    out = det.expire(5 * S)
    assert set(judged(out).values()) == {0} and len(judged(out)) == 14 and det.held == 0
    assert det.stats.released_unflagged == 14


def test_window_is_event_time_and_old_targets_expire():
    det = ContextDetector(ContextConfig(port_scan_ports=15, window_s=300))
    det.add(flows([("s", "h", p, 0, SYN_ONLY) for p in range(10)]), now_ns=0)
    det.expire(10**12)
    # ten more ports, but 301 s later: the first ten left the window
    out = det.add(flows([("s", "h", p, 301, SYN_ONLY) for p in range(10, 20)]), now_ns=10**12)
    assert out == [] and det.held == 10


def test_host_scan_and_syn_flood():
    det = ContextDetector(ContextConfig(host_scan_hosts=25, flood_flows=100, flood_window_s=10))
    sweep = flows([("10.0.0.9", f"10.0.1.{h}", 0, h * 0.1, PING) for h in range(30)], tag="p")
    flood = flows([(f"198.51.{i // 250}.{i % 250}", "10.0.0.1", 443, i * 0.001, SYN_ONLY) for i in range(150)],
                  tag="f")
    got = judged(det.add(sweep) + det.add(flood))
    assert sum(v == HOST_SCAN for v in got.values()) == 30
    assert sum(v == SYN_FLOOD for v in got.values()) == 150


def test_slow_flood_below_rate_is_not_flagged():
    det = ContextDetector(ContextConfig(flood_flows=100, flood_window_s=10))
    # 150 spoofed SYNs spread over 30 s: at most 50 in any 10 s window
    slow = flows([(f"198.51.0.{i}", "10.0.0.1", 443, i * 0.2, SYN_ONLY) for i in range(150)])
    assert det.add(slow) == []
    assert set(judged(det.flush()).values()) == {0}


def test_state_stays_bounded_and_survives_snapshot():
    det = ContextDetector(ContextConfig(max_entries=1000, max_held=500, host_scan_hosts=10**6,
                                        port_scan_ports=10**6, flood_flows=10**6))
    for b in range(10):  # 5,000 distinct spoofed probes to distinct services
        det.add(flows([(f"10.{b}.{i // 250}.{i % 250}", f"10.9.{b}.{i % 250}", i, b + i * 1e-4, SYN_ONLY)
                       for i in range(500)], tag=f"{b}-"), now_ns=b)
    assert len(det.snapshot()["key"]) <= 1000 and det.held <= 500
    assert det.stats.entries_dropped > 0 and det.stats.held_overflow > 0
    again = ContextDetector.restore(det.snapshot(), det.config)
    assert again.held == det.held and len(judged(again.flush())) == det.held


def test_disabled_stage_passes_flows_through(monkeypatch):
    monkeypatch.setenv("PHOENIX_CONTEXT_ENABLED", "false")
    flow = Dataflow("ctx_off")
    s = op.input("in", flow, TestingSource([flows([("s", "h", 1, 0, SYN_ONLY)])]))
    out: list[FlowRecords] = []
    op.output("out", context_stage("ctx", s, None), TestingSink(out))
    run_main(flow)
    assert len(out) == 1 and out[0].context is None


@pytest.mark.parametrize("batches", [1, 7])
def test_dataflow_stage_judges_a_real_scan_like_offline(batches):
    """The Bytewax stage on the nmap capture's flows: every probe flagged, nothing lost."""
    from flows.meter import meter_file
    from phoenix.config import PROJECT_ROOT

    rec = meter_file(str(PROJECT_ROOT.parent / "shared" / "data" / "pcaps" / "mal_scan_ndpi_nmap_synscan.pcap")).records
    cuts = np.linspace(0, len(rec), batches + 1).astype(int)
    flow = Dataflow("ctx_scan")
    s = op.input("in", flow, TestingSource([rec.slice(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]))
    out: list[FlowRecords] = []
    op.output("out", context_stage("ctx", s, None), TestingSink(out))
    run_main(flow)
    got = judged(out)
    assert len(got) == len(rec) == 1994
    assert all(v & PORT_SCAN for v in got.values())


def test_a_flood_keeps_only_threshold_entries_per_key():
    """Evidence is capped per key, so a flood cannot push a scan's evidence out of the table."""
    det = ContextDetector(ContextConfig(flood_flows=100, port_scan_ports=15, max_entries=2000))
    det.add(flows([("10.0.0.9", "10.0.0.1", p, 0, SYN_ONLY) for p in range(10)], tag="s"))
    flood = flows([("198.51.0.1", "10.0.0.2", 443, i * 1e-4, SYN_ONLY) for i in range(5000)], tag="f")
    det.add(flood)
    snap = det.snapshot()
    # flood entries: 100 for the flooded service, 1 for each port the scan touched
    assert np.bincount(snap["kind"], minlength=3)[2] == 100 + 10 and det.stats.entries_dropped == 0
    # the scan's first ten probes still count: five more ports cross its threshold
    out = det.add(flows([("10.0.0.9", "10.0.0.1", p, 1, SYN_ONLY) for p in range(10, 15)], tag="t"))
    assert sum(int((o.context & PORT_SCAN).astype(bool).sum()) for o in out) == 15
