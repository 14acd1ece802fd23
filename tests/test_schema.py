"""Unit tests of the message schema and the decode stage (pure logic, no broker)."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pytest

from flows.decode import Decoder
from flows.rabbitmq import Delivery
from flows.records import FlowRecords
from phoenix import schema
from phoenix.config import Settings, redact_url


def _netflow(n: int, **overrides) -> pa.Table:
    cols = {f: np.arange(n, dtype=np.float64) + i for i, f in enumerate(schema.FEATURES)}
    cols.update(overrides)
    return pa.table(cols)


def _delivery(body: bytes, offset: int = 7, content_type: str | None = None) -> Delivery:
    return Delivery("s.0", offset, body, content_type, time.time_ns())


def test_arrow_request_round_trip_keeps_envelope_and_rows():
    t = _netflow(5)
    body = schema.encode_request(t, kind="netflow", device_id="dev-1", seq=42, send_ts_ns=123)
    req = schema.decode_request(body)
    assert (req.kind, req.device_id, req.seq, req.send_ts_ns) == ("netflow", "dev-1", 42, 123)
    assert req.table.equals(t)


def test_reference_json_is_accepted_with_seconds_timestamp():
    doc = {"send_timestamp": 1700000000, "metadata": {"IPV4_SRC_ADDR": "10.0.0.1", "L4_SRC_PORT": 1,
                                                      "IPV4_DST_ADDR": "10.0.0.2", "L4_DST_PORT": 80},
           "packet": list(range(39))}
    req = schema.decode_request(json.dumps(doc).encode())
    assert req.send_ts_ns == 1700000000 * 10**9
    assert req.table.column("IPV4_SRC_ADDR").to_pylist() == ["10.0.0.1"]
    assert schema.netflow_matrix(req.table)[0].tolist() == list(map(float, range(39)))


@pytest.mark.parametrize(("body", "reason"), [
    (b"\x00garbage", "undecodable"),
    (b"{broken", "undecodable"),
    (b"[1, 2]", "bad_envelope"),
    (json.dumps({"schema": 2, "records": []}).encode(), "schema_version"),
    (json.dumps({"send_timestamp": 1, "metadata": {}, "packet": [1] * 38}).encode(), "feature_count"),
    (json.dumps({"schema": 1, "records": "nope"}).encode(), "bad_envelope"),
])
def test_bad_requests_raise_with_a_stable_reason(body, reason):
    with pytest.raises(schema.BadMessage) as err:
        schema.decode_request(body)
    assert err.value.reason == reason


def test_arrow_with_wrong_schema_version_is_refused():
    t = _netflow(1).replace_schema_metadata({b"phoenix.schema": b"9", b"phoenix.kind": b"netflow"})
    with pytest.raises(schema.BadMessage) as err:
        schema.decode_request(schema.encode_table(t))
    assert err.value.reason == "schema_version"


def test_decoder_merges_messages_and_dead_letters_only_bad_rows():
    good = schema.encode_request(_netflow(10), kind="netflow", device_id="a", seq=0, send_ts_ns=1)
    bad_vals = np.ones(4)
    bad_vals[[1, 3]] = [np.nan, np.inf]
    mixed = schema.encode_request(_netflow(4, IN_BYTES=bad_vals), kind="netflow", device_id="b", seq=3,
                                  send_ts_ns=2)
    missing = schema.encode_request(_netflow(2).drop_columns(["DNS_TTL_ANSWER"]), kind="netflow",
                                    device_id="c", seq=0, send_ts_ns=3)
    out = list(Decoder(Settings())([_delivery(good, 1), _delivery(mixed, 2), _delivery(missing, 3)]))
    records = [o for o in out if isinstance(o, FlowRecords)]
    dead = [json.loads(o) for o in out if isinstance(o, bytes)]
    assert len(records) == 1 and len(records[0]) == 12
    ids = records[0].keys.column("verdict_id").to_pylist()
    assert ids[:2] == ["a:0:0", "a:0:1"] and ids[10:] == ["b:3:0", "b:3:2"]
    assert {d["reason"] for d in dead} == {"non_finite", "feature_count"}
    nf = next(d for d in dead if d["reason"] == "non_finite")
    assert nf["records"] == 2 and nf["device_id"] == "b" and nf["source"] == "s.0@2"


def test_decoder_dead_letters_oversize_without_parsing():
    s = Settings(max_message_bytes=100)
    out = list(Decoder(s)([_delivery(b"{" + b" " * 200)]))
    assert json.loads(out[0])["reason"] == "oversize"


def test_ids_fall_back_to_stream_position_without_device_sequence():
    doc = {"send_timestamp": 1, "metadata": {}, "packet": [0.0] * 39}
    out = list(Decoder(Settings())([_delivery(json.dumps(doc).encode(), offset=99)]))
    assert out[0].keys.column("verdict_id").to_pylist() == ["s.0@99:0"]


def test_eve_alerts_group_by_source_and_escape_strings():
    n = 6
    verdicts = pa.table({
        "verdict_id": [f'id"{i}' for i in range(n)], "device_id": ["d\\1"] * n, "seq": np.zeros(n, np.int64),
        "src_addr": ["10.0.0.2", "10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.3", "10.0.0.2"],
        "src_port": pa.array(np.arange(n), pa.int32()), "dst_addr": ["192.0.2.1"] * n,
        "dst_port": pa.array(np.full(n, 23), pa.int32()), "protocol": pa.array(np.full(n, 6), pa.int16()),
        "first_seen_ns": np.full(n, 1), "last_seen_ns": np.full(n, 2),
        "score": pa.array([0.9, 0.2, 0.995, 0.7, 0.1, 0.6], pa.float32()),
        "malicious": [True, False, True, True, False, True],
        "detector": ["model", "", "model+port_scan", "model", "", "syn_flood"],
        "threshold": pa.array(np.full(n, 0.5), pa.float32()), "model_version": ["v"] * n,
        "send_ts_ns": np.full(n, 1), "verdict_ts_ns": np.full(n, 1_700_000_000_123_456_789),
        "latency_ms": pa.array(np.full(n, 1.5), pa.float32()), "classify_us": pa.array(np.ones(n), pa.float32()),
        "worker": ["w"] * n,
    }, schema=schema.VERDICT_SCHEMA)
    groups = schema.eve_alerts(verdicts)
    assert set(groups) == {"10.0.0.1", "10.0.0.2"}
    events = {src: [json.loads(line) for line in body.splitlines()] for src, body in groups.items()}
    assert sorted(e["verdict_id"] for e in events["10.0.0.2"]) == ['id"0', 'id"2', 'id"5']
    assert [e["verdict_id"] for e in events["10.0.0.1"]] == ['id"3']
    e = next(e for e in events["10.0.0.2"] if e["verdict_id"] == 'id"2')
    assert e["device_id"] == "d\\1" and e["alert"]["severity"] == 1 and e["dest_port"] == 23
    assert e["timestamp"] == "2023-11-14T22:13:20.123457Z"
    assert e["alert"]["signature"] == "phoenix.mlp: malicious flow" and e["alert"]["detector"] == "model+port_scan"
    flood = next(e for e in events["10.0.0.2"] if e["verdict_id"] == 'id"5')
    assert flood["alert"]["signature"] == "phoenix.context: syn_flood"
    assert schema.alert_routing_key("10.0.0.2") == "alert.10.0.0.2"


def test_secrets_are_redacted():
    assert redact_url("amqp://user:s3cret@host:5672/%2F") == "amqp://user:***@host:5672/%2F"
    assert "s3cret" not in repr(Settings(amqp_url="amqp://u:s3cret@h/"))
