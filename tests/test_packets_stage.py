"""The Bytewax meter stage: same flows as the offline meter, dead letters, idle expiry, recovery."""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, run_main

from capture.pcapio import iter_capture
from capture.synth import ether, ipv4_packet, udp_datagram
from flows.meter import meter_file, meter_packets
from flows.records import FlowRecords
from phoenix.config import PROJECT_ROOT, Settings
from phoenix.schema import KIND_NETFLOW, KIND_PACKETS, Request, decode_request, encode_request

PCAPS = PROJECT_ROOT.parent / "shared" / "data" / "pcaps"
HTTP = PCAPS / "benign_zeek_http_browsing.pcap"


def requests_of(path, device="dev-1", batch=64) -> list[Request]:
    out = []
    for i, b in enumerate(iter_capture(path, batch_packets=batch)):
        r = decode_request(encode_request(b.to_table(), kind=KIND_PACKETS, device_id=device, seq=i, send_ts_ns=10 + i))
        r.source = f"s.0@{i}"
        out.append(r)
    return out


def build(items, settings=None, flows_out=None, dead_out=None) -> Dataflow:
    from bytewax.testing import TestingSink

    flow = Dataflow("meter_test")
    s = op.input("in", flow, TestingSource(items))
    flows, dead = meter_packets("meter", s, settings or Settings())
    op.output("flows", flows, TestingSink(flows_out if flows_out is not None else []))
    op.output("dead", dead, TestingSink(dead_out if dead_out is not None else []))
    return flow


def by_id(parts: list[FlowRecords]) -> dict[str, np.ndarray]:
    out = {}
    for p in parts:
        for vid, f in zip(p.keys.column("verdict_id").to_pylist(), p.features, strict=True):
            out[vid] = f
    return out


def test_stage_matches_offline_meter_and_dead_letters_bad_requests(monkeypatch):
    monkeypatch.setenv("PHOENIX_METER_SHARDS", "4")
    reqs = requests_of(HTTP)
    bad_schema = decode_request(encode_request(pa.table({"x": [1]}), kind=KIND_PACKETS, device_id="d", seq=3,
                                               send_ts_ns=1))
    wrong_kind = Request(KIND_NETFLOW, "d", 4, 1, pa.table({"x": [1]}), "s.1@7")
    items = reqs[:2] + [bad_schema, wrong_kind] + reqs[2:]
    flows, dead = [], []
    run_main(build(items, flows_out=flows, dead_out=dead))
    assert all(isinstance(p, FlowRecords) for p in flows)
    got = by_id(flows)
    ref = meter_file(str(HTTP), device_id="dev-1").records
    want = by_id([ref])
    assert sorted(got) == sorted(want) and len(want) == 13
    for k in want:
        assert np.array_equal(got[k], want[k]), k
    reasons = sorted(__import__("json").loads(d)["reason"] for d in dead)
    assert reasons == ["packet_schema", "wrong_kind"]
    # send timestamps travel: every flow carries the send time of one of its requests
    assert set(FlowRecords.concat(flows).keys.column("send_ts_ns").to_pylist()) <= {10 + i for i in range(len(reqs))}


def _udp_req(ts_ns: int, seq: int) -> Request:
    from capture.pcapio import decode_raw_frames

    pk = decode_raw_frames([ether(ipv4_packet("10.9.0.1", "10.9.0.2", 17, udp_datagram(1000, 2000, b"x")))], [ts_ns], 1)
    return decode_request(encode_request(pk.to_table(), kind=KIND_PACKETS, device_id="d", seq=seq, send_ts_ns=ts_ns))


def test_idle_flows_expire_on_processing_time_without_new_packets(monkeypatch):
    """Two packets 10 ms apart in event time but 2.5 s apart in wall time, idle timeout 0.5 s: without
    packets in between, only the processing-time notification can split them into two flows."""
    monkeypatch.setenv("PHOENIX_METER_IDLE_TIMEOUT_S", "0.5")
    monkeypatch.setenv("PHOENIX_METER_SHARDS", "1")
    t = 1_700_000_000 * 10**9
    items = [_udp_req(t, 0), TestingSource.PAUSE(timedelta(seconds=2.5)), _udp_req(t + 10_000_000, 1)]
    flows: list = []
    run_main(build(items, flows_out=flows))
    rec = FlowRecords.concat(flows)
    assert len(rec) == 2, rec.keys.to_pylist()


@pytest.mark.parametrize("drained", [False, True])
def test_a_lagging_dataflow_does_not_split_flows(monkeypatch, drained):
    """Same wall-time gap, but the source's marks say whether the stream was drained in between:
    if it was not (the dataflow lags, the next request still queues), the flow stays whole."""
    from flows.rabbitmq import CaughtUp

    monkeypatch.setenv("PHOENIX_METER_IDLE_TIMEOUT_S", "0.5")
    monkeypatch.setenv("PHOENIX_METER_SHARDS", "2")
    t = 1_700_000_000 * 10**9
    first, second = _udp_req(t, 0), _udp_req(t + 10_000_000, 1)
    read_at = time.time_ns()
    for i, r in enumerate((first, second)):
        r.source, r.received_ns = f"s.0@{i}", read_at + i
    mark = CaughtUp("s.0", read_at + (2 * 10**9 if drained else -1))
    items = [first, mark, TestingSource.PAUSE(timedelta(seconds=2.5)), mark, second]
    flows: list = []
    run_main(build(items, flows_out=flows))
    assert len(FlowRecords.concat(flows)) == (2 if drained else 1)


def test_recovery_resumes_flow_state(tmp_path, monkeypatch):
    """Abort mid-capture, resume from the recovery store: every flow is still emitted, with the
    packets from before the abort counted (state came back from the snapshot)."""
    monkeypatch.setenv("PHOENIX_METER_SHARDS", "2")
    reqs = requests_of(HTTP, batch=50)
    init_db_dir(tmp_path, 1)
    rc = RecoveryConfig(str(tmp_path))
    items = reqs[:8] + [TestingSource.ABORT()] + reqs[8:]
    flows: list = []
    flow = build(items, flows_out=flows)
    run_main(flow, epoch_interval=timedelta(0), recovery_config=rc)
    run_main(flow, epoch_interval=timedelta(0), recovery_config=rc)
    got = by_id(flows)
    want = by_id([meter_file(str(HTTP), device_id="dev-1").records])
    assert set(want) <= set(got)
    for k in want:
        assert np.array_equal(got[k], want[k]), k
