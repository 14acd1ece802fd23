"""The dataflow against the real broker: every record gets a verdict, bad input is dead-lettered."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from capture.publisher import RequestPublisher
from capture.replay_netflow import load_netflow, replay
from phoenix import schema
from phoenix.verdicts import VerdictCollector
from tests.conftest import REPLAY_CSV, drain_deadletters

pytestmark = pytest.mark.broker


def _wait_dead(settings, n: int, timeout: float = 30) -> list[dict]:
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += drain_deadletters(settings)
        time.sleep(0.2)
    return got


def test_replay_file_gets_one_verdict_per_record_and_bad_input_is_dead_lettered(broker_settings, start_dataflow):
    s = broker_settings
    collector = VerdictCollector(s, alerts=True)
    df = start_dataflow(s)

    # Bad messages first: the flow must survive them and keep going.
    pub = RequestPublisher(s)
    good = load_netflow([str(REPLAY_CSV)]).slice(0, 20)
    nan_rows = good.set_column(good.schema.get_field_index("IN_BYTES"), "IN_BYTES",
                               pa.array([float("nan")] * 3 + [1.0] * 17))
    bad = {
        "undecodable": b"\x00\x01garbage",
        "bad_json": b"{not json",
        "schema_version": json.dumps({"schema": 99, "records": []}).encode(),
        "feature_count": json.dumps({"send_timestamp": 1, "metadata": {}, "packet": [1.0] * 12}).encode(),
        "oversize": b"{" + b" " * (s.max_message_bytes + 1),
    }
    for body in bad.values():
        pub.publish_request("dev-bad", body, schema.JSON_CONTENT_TYPE)
    pub.publish_request("dev-nan", schema.encode_request(nan_rows, kind="netflow", device_id="dev-nan", seq=0,
                                                         send_ts_ns=time.time_ns()), schema.ARROW_CONTENT_TYPE)
    pub.close()

    summary = replay([str(REPLAY_CSV)], devices=8, rate=0, batch=250, limit=None, loop=False,
                     settings=s, progress=False)
    assert summary["records"] == 10_000

    expected = 10_000 + 17
    assert collector.wait_for(expected, timeout=90, alive=df.alive), (collector.rows, df.output()[-3000:])
    collector.poll(1.0)
    verdicts = collector.table()
    ids = verdicts.column("verdict_id").to_pylist()
    assert len(ids) == expected and len(set(ids)) == expected
    assert set(verdicts.column("device_id").to_pylist()) == {f"dev-{i:04d}" for i in range(8)} | {"dev-nan"}
    # The replay CSV carries real addresses; they must come through to the verdicts.
    assert "192.168.1.31" in set(verdicts.column("src_addr").to_pylist())
    scores = verdicts.column("score").to_numpy()
    assert np.all((scores >= 0) & (scores <= 1))
    lat = verdicts.column("latency_ms").to_numpy()
    assert np.all(lat >= 0)

    # Every malicious verdict appears as exactly one EVE alert line, routed by its source.
    malicious = verdicts.filter(verdicts.column("malicious"))
    collector.wait_for(malicious.num_rows, timeout=30, key=lambda c: len(c.alert_lines))
    alerts = [json.loads(line) for line in collector.alert_lines]
    assert sorted(a["verdict_id"] for a in alerts) == sorted(malicious.column("verdict_id").to_pylist())
    for key in set(collector.alert_keys):
        assert key.startswith("alert.")

    dead = _wait_dead(s, len(bad) + 1)
    reasons = sorted(d["reason"] for d in dead)
    assert reasons == sorted(["undecodable", "undecodable", "schema_version", "feature_count", "oversize",
                              "non_finite"]), reasons
    nan_dead = next(d for d in dead if d["reason"] == "non_finite")
    assert nan_dead["records"] == 3 and nan_dead["device_id"] == "dev-nan"

    df.stop()  # closing the flow rolls the archive's last file
    archived = ds.dataset(s.archive_dir, format="parquet").to_table()
    assert archived.num_rows == expected
    assert archived.schema.equals(schema.VERDICT_SCHEMA)
    collector.close()


def test_two_processes_share_the_partitions_and_counts_stay_right(broker_settings, start_dataflow):
    s = broker_settings
    collector = VerdictCollector(s)
    addrs = "127.0.0.1:2101;127.0.0.1:2102"
    start_dataflow(s, process=(0, addrs))
    start_dataflow(s, process=(1, addrs))
    replay([str(REPLAY_CSV)], devices=16, rate=0, batch=200, limit=20_000, loop=True, settings=s, progress=False)
    assert collector.wait_for(20_000, timeout=120), collector.rows
    collector.poll(1.0)
    table = collector.table()
    assert table.num_rows == 20_000
    assert len(set(table.column("verdict_id").to_pylist())) == 20_000
    collector.close()
