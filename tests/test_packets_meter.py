"""Flow meter: features of crafted packet sequences, derived by hand from nProbe's definitions.

The TCP conversation used below (client 10.0.0.1:40000 → server 10.0.0.2:80), times in ms:

  #  t     dir  flags    IP len  notes
  1  0     C→S  SYN      40      ttl 64, win 64240
  2  10    S→C  SYN-ACK  40      ttl 57, win 65160
  3  20    C→S  ACK      40
  4  30    C→S  PSH-ACK  140     100 bytes, seq 1001
  5  1030  C→S  PSH-ACK  140     the same 100 bytes again: a retransmission
  6  1040  S→C  PSH-ACK  340     300 bytes
  7  1050  C→S  FIN-ACK  40
  8  1060  S→C  FIN-ACK  40
  9  1070  C→S  ACK      40      last ACK of the teardown: same flow (close grace)

IN (client→server): packets 1,3,4,5,7,9 = 6 packets, 440 bytes; OUT: 2,6,8 = 3 packets, 420 bytes.
"""

from __future__ import annotations

import pickle

import numpy as np

from capture.pcapio import PacketBatch, decode_raw_frames
from capture.synth import dns_answer, dns_query, ether, ipv4_packet, tcp_segment, udp_datagram
from flows.meter import FlowMeter, MeterConfig
from flows.records import FlowRecords
from phoenix.schema import FEATURES

T0 = 1_700_000_000 * 10**9
MS = 1_000_000
C, S = "10.0.0.1", "10.0.0.2"


def tcp(src, dst, sport, dport, flags, payload=b"", ttl=64, win=64240, seq=1):
    return ether(ipv4_packet(src, dst, 6, tcp_segment(sport, dport, seq, 0, flags, payload, win), ttl))


def conversation() -> list[tuple[int, bytes]]:
    c = dict(src=C, dst=S, sport=40000, dport=80, ttl=64, win=64240)
    s = dict(src=S, dst=C, sport=80, dport=40000, ttl=57, win=65160)
    return [
        (0, tcp(**c, flags=0x02, seq=1000)),
        (10, tcp(**s, flags=0x12, seq=5000)),
        (20, tcp(**c, flags=0x10, seq=1001)),
        (30, tcp(**c, flags=0x18, payload=b"a" * 100, seq=1001)),
        (1030, tcp(**c, flags=0x18, payload=b"a" * 100, seq=1001)),
        (1040, tcp(**s, flags=0x18, payload=b"b" * 300, seq=5001)),
        (1050, tcp(**c, flags=0x11, seq=1101)),
        (1060, tcp(**s, flags=0x11, seq=5301)),
        (1070, tcp(**c, flags=0x10, seq=1102)),
    ]


def batch(frames: list[tuple[int, bytes]]) -> PacketBatch:
    return decode_raw_frames([f for _, f in frames], [T0 + t * MS for t, _ in frames], 1)


def run(frames, config=None, chunk=None) -> FlowRecords:
    m = FlowMeter(config or MeterConfig(nprobe_quirks=False))
    pk = batch(frames)
    out = []
    step = chunk or len(pk)
    for i in range(0, len(pk), step):
        out += m.add(pk.take(np.arange(i, min(i + step, len(pk)))))
    last = m.flush()
    if last is not None:
        out.append(last)
    rec = FlowRecords.concat([r for r in out if len(r)])
    order = np.argsort(rec.keys.column("first_seen_ns").to_numpy(), kind="stable")
    return FlowRecords(rec.keys.take(order), rec.features[order])


def feat(rec: FlowRecords, i: int = 0) -> dict[str, float]:
    return dict(zip(FEATURES, rec.features[i].tolist(), strict=True))


EXPECTED_TCP = {
    "PROTOCOL": 6, "L7_PROTO": 7.0, "IN_BYTES": 440, "IN_PKTS": 6, "OUT_BYTES": 420, "OUT_PKTS": 3,
    "TCP_FLAGS": 0x1B, "CLIENT_TCP_FLAGS": 0x02 | 0x10 | 0x18 | 0x11, "SERVER_TCP_FLAGS": 0x12 | 0x18 | 0x11,
    "FLOW_DURATION_MILLISECONDS": 1070, "DURATION_IN": 1070, "DURATION_OUT": 1050,
    "MIN_TTL": 57, "MAX_TTL": 64, "LONGEST_FLOW_PKT": 340, "SHORTEST_FLOW_PKT": 40,
    "MIN_IP_PKT_LEN": 40, "MAX_IP_PKT_LEN": 340,
    "SRC_TO_DST_SECOND_BYTES": 440 / 1.07, "DST_TO_SRC_SECOND_BYTES": 420 / 1.07,
    "RETRANSMITTED_IN_BYTES": 140, "RETRANSMITTED_IN_PKTS": 1, "RETRANSMITTED_OUT_BYTES": 0,
    "RETRANSMITTED_OUT_PKTS": 0,
    "SRC_TO_DST_AVG_THROUGHPUT": 3289, "DST_TO_SRC_AVG_THROUGHPUT": 3140,  # floor(bytes * 8 / 1.07 s)
    "NUM_PKTS_UP_TO_128_BYTES": 6, "NUM_PKTS_128_TO_256_BYTES": 2, "NUM_PKTS_256_TO_512_BYTES": 1,
    "NUM_PKTS_512_TO_1024_BYTES": 0, "NUM_PKTS_1024_TO_1514_BYTES": 0,
    "TCP_WIN_MAX_IN": 64240, "TCP_WIN_MAX_OUT": 65160, "ICMP_TYPE": 0, "ICMP_IPV4_TYPE": 0,
    "DNS_QUERY_ID": 0, "DNS_QUERY_TYPE": 0, "DNS_TTL_ANSWER": 0, "FTP_COMMAND_RET_CODE": 0,
}


def test_tcp_conversation_features_by_hand():
    rec = run(conversation())
    assert len(rec) == 1
    got = feat(rec)
    for name, want in EXPECTED_TCP.items():
        assert got[name] == pytest_approx(want), name
    k = rec.keys.to_pylist()[0]
    assert (k["src_addr"], k["src_port"], k["dst_addr"], k["dst_port"], k["protocol"]) == (C, 40000, S, 80, 6)
    assert k["first_seen_ns"] == T0 and k["last_seen_ns"] == T0 + 1070 * MS
    assert k["verdict_id"] == f":6:{C}:40000-{S}:80:{T0}"


def pytest_approx(v):
    import pytest

    return pytest.approx(v, rel=1e-9, abs=1e-9)


def test_nprobe_quirks_reproduce_training_artefacts():
    frames = conversation() + [(1080 + 40_000, tcp(C, S, 40000, 80, 0x02, seq=9))]  # later lone SYN
    rec = run(frames, MeterConfig(nprobe_quirks=True, timing="wrapped"))
    assert len(rec) == 2
    a, b = feat(rec, 0), feat(rec, 1)
    assert a["FLOW_DURATION_MILLISECONDS"] == 4_294_967 - 1070 and a["DURATION_IN"] == 1070
    assert a["MIN_TTL"] == 57 and a["MIN_IP_PKT_LEN"] == 40
    assert a["SRC_TO_DST_AVG_THROUGHPUT"] == (440 // 6) * 8000 and a["DST_TO_SRC_AVG_THROUGHPUT"] == 140 * 8000
    # one-packet flow: TTLs and MIN_IP_PKT_LEN are 0 in NF-v2, duration 0, 40 bytes over 1 ms
    assert (b["IN_PKTS"], b["OUT_PKTS"], b["MIN_TTL"], b["MAX_TTL"], b["MIN_IP_PKT_LEN"]) == (1, 0, 0, 0, 0)
    assert b["FLOW_DURATION_MILLISECONDS"] == 0 and b["SRC_TO_DST_AVG_THROUGHPUT"] == 320_000
    assert b["SRC_TO_DST_SECOND_BYTES"] == 40 and b["SHORTEST_FLOW_PKT"] == 40
    # default timing "zero": the convention of most NF-v2 rows (no timing information at all)
    z = feat(run(conversation(), MeterConfig()))
    assert (z["FLOW_DURATION_MILLISECONDS"], z["DURATION_IN"], z["DURATION_OUT"]) == (0, 0, 0)
    assert z["SRC_TO_DST_SECOND_BYTES"] == 440 and z["DST_TO_SRC_SECOND_BYTES"] == 420
    assert z["SRC_TO_DST_AVG_THROUGHPUT"] == 440 * 8000
    assert {k: z[k] for k in EXPECTED_TCP if "DURATION" not in k and "SECOND" not in k and "THROUGHPUT" not in k} \
        == {k: v for k, v in EXPECTED_TCP.items() if "DURATION" not in k and "SECOND" not in k and "THROUGHPUT" not in k}


def test_batch_boundaries_do_not_change_features():
    whole = run(conversation())
    for chunk in (1, 2, 4):
        part = run(conversation(), chunk=chunk)
        assert len(part) == 1
        assert np.array_equal(part.features, whole.features), chunk
        assert part.keys.column("verdict_id").to_pylist() == whole.keys.column("verdict_id").to_pylist()


def test_new_syn_after_teardown_starts_a_new_flow():
    frames = conversation() + [(1100, tcp(C, S, 40000, 80, 0x02, seq=7))]  # port reuse 30 ms later
    rec = run(frames)
    assert len(rec) == 2
    assert feat(rec, 0)["IN_PKTS"] == 6 and feat(rec, 1)["IN_PKTS"] == 1
    assert feat(rec, 1)["CLIENT_TCP_FLAGS"] == 0x02


def test_rst_ends_flow_and_late_packet_after_grace_is_new():
    frames = [(0, tcp(C, S, 1, 2, 0x02)), (5, tcp(S, C, 2, 1, 0x14)), (3000, tcp(C, S, 1, 2, 0x10))]
    rec = run(frames)
    assert len(rec) == 2
    assert feat(rec, 0)["SERVER_TCP_FLAGS"] == 0x14 and feat(rec, 0)["OUT_PKTS"] == 1


def test_idle_and_active_timeouts():
    cfg = MeterConfig(idle_timeout_s=30, active_timeout_s=120, nprobe_quirks=False)
    u = lambda t: (t, ether(ipv4_packet(C, S, 17, udp_datagram(5000, 6000, b"x"))))  # noqa: E731
    rec = run([u(0), u(40_000)], cfg)  # 40 s gap > 30 s idle
    assert len(rec) == 2
    rec = run([u(t * 10_000) for t in range(14)], cfg)  # every 10 s for 130 s: active timeout at 120 s
    assert len(rec) == 2
    assert feat(rec, 0)["IN_PKTS"] == 13 and feat(rec, 0)["FLOW_DURATION_MILLISECONDS"] == 120_000
    assert feat(rec, 1)["IN_PKTS"] == 1


def test_udp_dns_and_icmp_flows():
    q = ether(ipv4_packet("10.0.0.5", "10.0.0.53", 17, udp_datagram(3333, 53, dns_query(0xBEEF, "a.example"))))
    a = ether(ipv4_packet("10.0.0.53", "10.0.0.5", 17, udp_datagram(53, 3333, dns_answer(0xBEEF, "a.example", "1.2.3.4", 300))))
    import struct

    req = ether(ipv4_packet(C, S, 1, struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping"))
    rep = ether(ipv4_packet(S, C, 1, struct.pack("!BBHHH", 0, 0, 0, 1, 1) + b"ping", ttl=60))
    rec = run([(0, q), (3, a), (10, req), (11, rep)])
    by_proto = {int(f[0]): dict(zip(FEATURES, f.tolist(), strict=True)) for f in rec.features}
    d, i = by_proto[17], by_proto[1]
    assert (d["L7_PROTO"], d["DNS_QUERY_ID"], d["DNS_QUERY_TYPE"], d["DNS_TTL_ANSWER"]) == (5.0, 0xBEEF, 1, 300)
    assert (d["IN_PKTS"], d["OUT_PKTS"], d["DURATION_IN"], d["FLOW_DURATION_MILLISECONDS"]) == (1, 1, 0, 3)
    assert (i["ICMP_TYPE"], i["ICMP_IPV4_TYPE"], i["IN_PKTS"], i["OUT_PKTS"], i["MIN_TTL"]) == (2048, 8, 1, 1, 60)


def test_bounded_table_evicts_and_counts():
    cfg = MeterConfig(max_flows=32, nprobe_quirks=False)
    frames = [(i, tcp(C, S, 10_000 + i, 80, 0x02)) for i in range(100)]
    m = FlowMeter(cfg, initial_capacity=16)
    out = m.add(batch(frames[:50])) + m.add(batch(frames[50:]))
    assert m.open_flows <= 32
    last = m.flush()
    total = sum(len(r) for r in out) + (len(last) if last is not None else 0)
    assert total == 100 and m.stats.evicted >= 68


def test_snapshot_restore_continues_exactly():
    frames = conversation()
    pk = batch(frames)
    m = FlowMeter(MeterConfig(nprobe_quirks=False))
    assert m.add(pk.take(np.arange(0, 4))) == []
    m2 = FlowMeter.restore(pickle.loads(pickle.dumps(m.snapshot())))
    out = m2.add(pk.take(np.arange(4, len(pk))))
    last = m2.flush()
    rec = FlowRecords.concat([r for r in out + [last] if r is not None and len(r)])
    assert np.array_equal(rec.features, run(frames).features)


def test_devices_are_metered_separately():
    pk = batch(conversation())
    m = FlowMeter(MeterConfig(nprobe_quirks=False))
    m.add(pk, device_id="gw-a")
    m.add(pk, device_id="gw-b")
    rec = m.flush()
    assert sorted(rec.keys.column("device_id").to_pylist()) == ["gw-a", "gw-b"]
    assert (rec.features[:, FEATURES.index("IN_PKTS")] == 6).all()
