"""pcap replay devices: dealing by flow, sequence numbers, timing, loops; one real-broker run."""

from __future__ import annotations

import numpy as np
import pytest

from capture.pcapio import PacketBatch
from capture.replay_pcap import device_id, load_packets, messages
from flows.meter import canonical
from phoenix.config import PROJECT_ROOT
from phoenix.schema import decode_request

PCAPS = PROJECT_ROOT.parent / "shared" / "data" / "pcaps"
HTTP = str(PCAPS / "benign_zeek_http_browsing.pcap")


def test_devices_get_whole_flows_in_order():
    pk, _ = load_packets([HTTP])
    msgs = list(messages(pk, devices=3, batch=100, speed=0, rate=0, loop=False))
    assert sum(m.packets for m in msgs) == len(pk) == 751
    flows_of: dict[int, set] = {}
    for m in msgs:
        r = decode_request(m.body)
        assert r.device_id == device_id(m.device) and r.table.num_rows <= 100
        b = PacketBatch.from_table(r.table)
        flows_of.setdefault(m.device, set()).update(canonical(b)["key"].tolist())
    keys = list(flows_of.values())
    assert all(not (a & b) for i, a in enumerate(keys) for b in keys[i + 1:])  # no flow on two devices
    for d in flows_of:
        seqs = [m.seq for m in msgs if m.device == d]
        assert seqs == list(range(len(seqs)))


def test_timestamps_keep_spacing_and_loops_are_new_flows():
    pk, _ = load_packets([HTTP])
    msgs = list(messages(pk, devices=1, batch=10_000, speed=0, rate=0, loop=True, limit=2 * len(pk)))
    ts = np.concatenate([PacketBatch.from_table(decode_request(m.body).table).ts_ns for m in msgs])
    assert len(ts) == 2 * len(pk)
    first, second = ts[:len(pk)], ts[len(pk):]
    assert np.array_equal(np.diff(first), np.diff(pk.ts_ns))
    assert second.min() > first.max()  # the second pass starts after the first ends


def test_rate_pacing_uses_the_clock():
    pk, _ = load_packets([HTTP])
    now = [0.0]
    slept = []

    def clock():
        return now[0]

    def sleep(s):
        slept.append(s)
        now[0] += max(s, 0.01)

    msgs = list(messages(pk, devices=1, batch=10_000, speed=0, rate=1000, loop=False, limit=100,
                         clock=clock, sleep=sleep))
    assert sum(m.packets for m in msgs) == 100
    assert now[0] >= 0.09  # 100 packets at 1000/s take ~0.1 s


@pytest.mark.broker
def test_replay_publishes_confirmed_batches(broker_settings):
    from capture.replay_pcap import replay

    out = replay([HTTP, str(PCAPS / "benign_zeek_mqtt.pcap")], devices=2, speed=0, rate=0, batch=256, loop=False,
                 limit=None, settings=broker_settings, progress=False)
    assert out["packets"] == 751 + 19 and out["messages"] >= 4
