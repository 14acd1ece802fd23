"""pcap replay devices → RabbitMQ → flows.classify (meter + model) → verdicts, against the real broker.

The live path must find the same flows as the offline meter: same count, same 5-tuples.
"""

from __future__ import annotations

import pytest

from capture.replay_pcap import replay
from flows.meter import meter_file
from phoenix.config import PROJECT_ROOT
from phoenix.verdicts import VerdictCollector

pytestmark = pytest.mark.broker
PCAPS = PROJECT_ROOT.parent / "shared" / "data" / "pcaps"


def test_pcap_replay_gets_one_verdict_per_flow(broker_settings, start_dataflow, monkeypatch):
    # short timeouts so flows close soon after the replay ends (processing-time expiry)
    monkeypatch.setenv("PHOENIX_METER_IDLE_TIMEOUT_S", "2")
    monkeypatch.setenv("PHOENIX_METER_CLOSE_GRACE_S", "0.5")
    files = [PCAPS / "benign_zeek_http_browsing.pcap", PCAPS / "mal_bruteforce_zeek_ssh_sshguess.pcap"]
    s = broker_settings
    collector = VerdictCollector(s, alerts=False)
    df = start_dataflow(s)
    out = replay([str(f) for f in files], devices=3, speed=0, rate=0, batch=128, loop=False, limit=None,
                 settings=s, progress=False)
    assert out["packets"] == 751 + 431
    from flows.meter import MeterConfig

    cfg = MeterConfig(idle_timeout_s=2, close_grace_s=0.5)
    offline = [meter_file(str(f), cfg).records for f in files]
    want = sorted((k["src_addr"], k["src_port"], k["dst_addr"], k["dst_port"]) for r in offline
                  for k in r.keys.select(["src_addr", "src_port", "dst_addr", "dst_port"]).to_pylist())
    assert collector.wait_for(len(want), timeout=90, alive=df.alive), (collector.rows, df.output()[-3000:])
    collector.poll(2.0)
    v = collector.table()
    got = sorted(zip(*(v.column(c).to_pylist() for c in ("src_addr", "src_port", "dst_addr", "dst_port")),
                     strict=True))
    assert got == want
    assert set(v.column("device_id").to_pylist()) <= {"pcap-0000", "pcap-0001", "pcap-0002"}
    collector.close()


def test_replayed_scan_and_flood_are_flagged_live_as_offline(broker_settings, start_dataflow, monkeypatch, tmp_path):
    """Probe flows dealt to 4 devices and every meter shard meet in one context detector, and the
    live verdicts equal ``phoenix scan``'s (same flows, same labels, same detectors)."""
    import json

    import pyarrow.parquet as pq

    from capture.commands import scan

    monkeypatch.setenv("PHOENIX_METER_IDLE_TIMEOUT_S", "2")
    monkeypatch.setenv("PHOENIX_METER_CLOSE_GRACE_S", "0.5")
    files = [PCAPS / "mal_scan_ndpi_nmap_synscan.pcap", PCAPS / "mal_dos_sv_syn_flood_443.pcap",
             PCAPS / "benign_zeek_mqtt.pcap"]
    s = broker_settings
    collector = VerdictCollector(s, alerts=True)
    df = start_dataflow(s)
    replay([str(f) for f in files], devices=4, speed=0, rate=0, batch=256, loop=False, limit=None,
           settings=s, progress=False)
    out = tmp_path / "offline.parquet"
    scan([str(f) for f in files], out=str(out))
    cols = ["src_addr", "src_port", "dst_addr", "dst_port", "malicious", "detector"]
    want = sorted(map(tuple, pq.read_table(out).select(cols).to_pandas().itertuples(index=False)))
    assert collector.wait_for(len(want), timeout=90, alive=df.alive), (collector.rows, df.output()[-3000:])
    collector.poll(2.0)
    v = collector.table().to_pandas().drop_duplicates("verdict_id")
    got = sorted(map(tuple, v[cols].itertuples(index=False)))
    assert got == want, (set(got) ^ set(want))
    assert sum("port_scan" in d for *_, d in got) >= 1994 and sum("syn_flood" in d for *_, d in got) == 200
    # every malicious verdict was also published as an EVE alert naming its detector
    alerts = {e["verdict_id"]: e for e in map(json.loads, collector.alert_lines)}
    assert set(v[v.malicious].verdict_id) <= set(alerts)
    flood = v[v.detector.str.contains("syn_flood")].iloc[0]
    assert alerts[flood.verdict_id]["alert"]["detector"] == flood.detector
    collector.close()
