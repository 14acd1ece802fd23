"""Every message and record the system exchanges, defined once.

Producers (``capture/``), the dataflow (``flows/``), training (``fl/``) and the dashboard
import from here; nothing else spells a column name or a header key.

Wire formats
------------
* **Request** (device → ``phoenix.requests``): an Arrow IPC stream whose schema metadata is
  the envelope (schema version, kind, device id, per-device sequence number, send time in
  integer nanoseconds) and whose rows are NetFlow records (kind ``netflow``) or packet headers
  (kind ``packets``). Simple devices may send JSON instead: one envelope with ``records``, or
  the reference system's ``{"send_timestamp", "metadata", "packet": [39 floats]}``.
* **Verdict batch** (dataflow → ``phoenix.alerts``, routing key ``verdicts.<worker>``): Arrow
  IPC, :data:`VERDICT_SCHEMA`, one row per classified flow.
* **Alert** (routing key ``alert.<src address>``): newline-delimited EVE-style JSON, one line per
  malicious flow, one message per source address per batch so alert volume never caps
  throughput. Dots in IPv4 addresses make each octet a topic word: a SOC tool can bind
  ``alert.10.1.#`` to follow a subnet, or ``alert.#`` for everything.
* **Dead letter** (→ ``phoenix.deadletter``): JSON with the reason and the offending bytes' head.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_VERSION = 1

# The 39 NF-v2 model features, in the model's input order (REFERENCE.md).
FEATURES: tuple[str, ...] = (
    "PROTOCOL", "L7_PROTO", "IN_BYTES", "IN_PKTS", "OUT_BYTES", "OUT_PKTS", "TCP_FLAGS",
    "CLIENT_TCP_FLAGS", "SERVER_TCP_FLAGS", "FLOW_DURATION_MILLISECONDS", "DURATION_IN",
    "DURATION_OUT", "MIN_TTL", "MAX_TTL", "LONGEST_FLOW_PKT", "SHORTEST_FLOW_PKT",
    "MIN_IP_PKT_LEN", "MAX_IP_PKT_LEN", "SRC_TO_DST_SECOND_BYTES", "DST_TO_SRC_SECOND_BYTES",
    "RETRANSMITTED_IN_BYTES", "RETRANSMITTED_IN_PKTS", "RETRANSMITTED_OUT_BYTES",
    "RETRANSMITTED_OUT_PKTS", "SRC_TO_DST_AVG_THROUGHPUT", "DST_TO_SRC_AVG_THROUGHPUT",
    "NUM_PKTS_UP_TO_128_BYTES", "NUM_PKTS_128_TO_256_BYTES", "NUM_PKTS_256_TO_512_BYTES",
    "NUM_PKTS_512_TO_1024_BYTES", "NUM_PKTS_1024_TO_1514_BYTES", "TCP_WIN_MAX_IN",
    "TCP_WIN_MAX_OUT", "ICMP_TYPE", "ICMP_IPV4_TYPE", "DNS_QUERY_ID", "DNS_QUERY_TYPE",
    "DNS_TTL_ANSWER", "FTP_COMMAND_RET_CODE",
)
N_FEATURES = len(FEATURES)
LABEL = "Label"
ATTACK = "Attack"

# Flow key columns, NF-v2 names. Optional in NetFlow requests (the UQ samples dropped them).
SRC_ADDR, SRC_PORT, DST_ADDR, DST_PORT = "IPV4_SRC_ADDR", "L4_SRC_PORT", "IPV4_DST_ADDR", "L4_DST_PORT"
FIRST_SEEN, LAST_SEEN = "FIRST_SEEN_NS", "LAST_SEEN_NS"
KEY_COLUMNS = (SRC_ADDR, SRC_PORT, DST_ADDR, DST_PORT)

KIND_NETFLOW = "netflow"
KIND_PACKETS = "packets"
KINDS = (KIND_NETFLOW, KIND_PACKETS)

ARROW_CONTENT_TYPE = "application/vnd.apache.arrow.stream"
JSON_CONTENT_TYPE = "application/json"
NDJSON_CONTENT_TYPE = "application/x-ndjson"

# Envelope keys in the Arrow schema metadata of a request.
_META_VERSION = b"phoenix.schema"
_META_KIND = b"phoenix.kind"
_META_DEVICE = b"phoenix.device"
_META_SEQ = b"phoenix.seq"
_META_SENT = b"phoenix.send_ts_ns"

# Packet headers as the capture side sends them (kind "packets"); the flow meter consumes them.
# Addresses are 16 raw bytes (IPv6, or IPv4-mapped ::ffff:a.b.c.d) rather than text: the capture
# side fills them with one numpy gather and the meter hashes them without parsing strings
# (capture/pcapio.py: addr_to_str / str_to_addr convert).
PACKET_SCHEMA = pa.schema([
    ("ts_ns", pa.int64()),            # capture timestamp, ns since the epoch
    ("src_addr", pa.binary(16)),
    ("dst_addr", pa.binary(16)),
    ("src_port", pa.int32()),
    ("dst_port", pa.int32()),
    ("protocol", pa.int16()),         # IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6)
    ("ip_len", pa.int32()),           # IP total length (header + payload), bytes
    ("ttl", pa.int16()),              # IPv4 TTL or IPv6 hop limit
    ("tcp_flags", pa.int16()),
    ("tcp_window", pa.int32()),
    ("tcp_seq", pa.int64()),
    ("payload_len", pa.int32()),      # L4 payload bytes
    ("icmp_type", pa.int32()),        # type * 256 + code, 0 when not ICMP
    ("dns_query_id", pa.int32()),
    ("dns_query_type", pa.int32()),
    ("dns_ttl_answer", pa.int64()),
    ("ftp_ret_code", pa.int32()),
])

VERDICT_SCHEMA = pa.schema([
    ("verdict_id", pa.string()),      # deterministic: a replayed record gets the same id
    ("device_id", pa.string()),
    ("seq", pa.int64()),
    ("src_addr", pa.string()),
    ("src_port", pa.int32()),
    ("dst_addr", pa.string()),
    ("dst_port", pa.int32()),
    ("protocol", pa.int16()),
    ("first_seen_ns", pa.int64()),
    ("last_seen_ns", pa.int64()),
    ("score", pa.float32()),          # P(malicious)
    ("malicious", pa.bool_()),
    ("detector", pa.string()),        # what flagged it: "model", "port_scan", "host_scan", "syn_flood", joined by "+"
    ("threshold", pa.float32()),
    ("model_version", pa.string()),
    ("send_ts_ns", pa.int64()),
    ("verdict_ts_ns", pa.int64()),
    ("latency_ms", pa.float32()),     # device send time → verdict
    ("classify_us", pa.float32()),    # model time per record in its batch
    ("worker", pa.string()),
])


class BadMessage(ValueError):
    """A request that cannot be classified; ``reason`` is a stable dead-letter code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Request:
    """A decoded request envelope with its rows."""

    kind: str
    device_id: str
    seq: int
    send_ts_ns: int
    table: pa.Table
    source: str = ""  # where it was read: "<stream>@<offset>", for dead letters and verdict ids
    received_ns: int = 0  # when the dataflow read it (its source's clock)

    @property
    def stream(self) -> str:
        return self.source.rpartition("@")[0]


# --------------------------------------------------------------------------- requests

def encode_request(table: pa.Table, *, kind: str, device_id: str, seq: int, send_ts_ns: int) -> bytes:
    """Serialize one request batch as Arrow IPC with its envelope in the schema metadata."""
    meta = {
        _META_VERSION: str(SCHEMA_VERSION).encode(),
        _META_KIND: kind.encode(),
        _META_DEVICE: device_id.encode(),
        _META_SEQ: str(seq).encode(),
        _META_SENT: str(send_ts_ns).encode(),
    }
    table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_request(body: bytes, content_type: str | None = None) -> Request:
    """Parse a request body (Arrow IPC or JSON). Raises :class:`BadMessage`."""
    if body[:1] in (b"{", b"[") or content_type == JSON_CONTENT_TYPE:
        return _decode_json_request(body)
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(body))
        table = reader.read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadMessage("undecodable", f"neither Arrow IPC nor JSON ({exc})") from None
    meta = table.schema.metadata or {}
    version = meta.get(_META_VERSION)
    if version != str(SCHEMA_VERSION).encode():
        raise BadMessage("schema_version", f"schema version {version!r}, this build reads {SCHEMA_VERSION}")
    kind = meta.get(_META_KIND, b"").decode("utf-8", "replace")
    if kind not in KINDS:
        raise BadMessage("unknown_kind", f"kind {kind!r} is not one of {KINDS}")
    try:
        seq = int(meta.get(_META_SEQ, b"-1"))
        sent = int(meta.get(_META_SENT, b"0"))
    except ValueError:
        raise BadMessage("bad_envelope", "seq and send_ts_ns must be integers") from None
    device = meta.get(_META_DEVICE, b"").decode("utf-8", "replace")
    return Request(kind, device, seq, sent, table.replace_schema_metadata(None))


def _decode_json_request(body: bytes) -> Request:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMessage("undecodable", f"invalid JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(doc, dict):
        raise BadMessage("bad_envelope", "a JSON request must be an object")
    if "packet" in doc and "metadata" in doc:
        return _decode_reference_json(doc)
    if doc.get("schema") != SCHEMA_VERSION:
        raise BadMessage("schema_version", f"schema {doc.get('schema')!r}, this build reads {SCHEMA_VERSION}")
    kind = doc.get("kind", KIND_NETFLOW)
    if kind != KIND_NETFLOW:
        raise BadMessage("unknown_kind", "JSON requests carry NetFlow records only")
    records = doc.get("records")
    if records is None and isinstance(doc.get("record"), dict):
        records = [doc["record"]]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise BadMessage("bad_envelope", "expected 'records': a list of objects")
    try:
        seq = int(doc.get("seq", -1))
        sent = int(doc.get("send_ts_ns", 0))
        table = pa.Table.from_pylist(records) if records else pa.table({})
    except (TypeError, ValueError, pa.ArrowException) as exc:
        raise BadMessage("bad_envelope", f"records do not form a table ({exc})") from None
    return Request(KIND_NETFLOW, str(doc.get("device_id", "")), seq, sent, table)


def _decode_reference_json(doc: dict[str, Any]) -> Request:
    """The reference system's one-record message, accepted as is (its timestamp is in seconds)."""
    values = doc["packet"]
    if not isinstance(values, list):
        raise BadMessage("bad_envelope", "'packet' must be a list of numbers")
    if len(values) != N_FEATURES:
        raise BadMessage("feature_count", f"'packet' has {len(values)} values, the model takes {N_FEATURES}")
    meta = doc.get("metadata") or {}
    try:
        cols: dict[str, list] = {name: [float(v)] for name, v in zip(FEATURES, values, strict=True)}
        cols[SRC_ADDR] = [str(meta.get(SRC_ADDR, ""))]
        cols[SRC_PORT] = [int(meta.get(SRC_PORT, 0))]
        cols[DST_ADDR] = [str(meta.get(DST_ADDR, ""))]
        cols[DST_PORT] = [int(meta.get(DST_PORT, 0))]
        sent = int(float(doc.get("send_timestamp", 0)) * 1_000_000_000)
    except (TypeError, ValueError) as exc:
        raise BadMessage("bad_envelope", f"reference-format message with bad values ({exc})") from None
    return Request(KIND_NETFLOW, str(doc.get("device_id", "")), int(doc.get("seq", -1)), sent, pa.table(cols))


FEATURE_SCHEMA = pa.schema([(f, pa.float64()) for f in FEATURES])


def netflow_features(table: pa.Table) -> pa.Table:
    """The 39 feature columns as float64, in model order. Raises :class:`BadMessage`."""
    names = set(table.column_names)  # the property builds a new list on every access
    missing = [f for f in FEATURES if f not in names]
    if missing:
        raise BadMessage("feature_count", f"{len(missing)} of {N_FEATURES} features missing (first: {missing[0]})")
    feats = table.select(list(FEATURES))
    if feats.schema.equals(FEATURE_SCHEMA):
        return feats
    try:
        return feats.cast(FEATURE_SCHEMA)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise BadMessage("bad_type", f"feature columns must be numeric ({exc})") from None


def netflow_matrix(table: pa.Table) -> np.ndarray:
    """The (n, 39) float64 feature matrix of a NetFlow table. Raises :class:`BadMessage`."""
    feats = netflow_features(table)
    if feats.num_rows == 0:
        return np.empty((0, N_FEATURES))
    return np.column_stack([feats.column(i).to_numpy() for i in range(N_FEATURES)])


# --------------------------------------------------------------------------- verdicts

def encode_table(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_table(body: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(body)).read_all()


def alert_routing_key(src_addr: str) -> str:
    return f"alert.{src_addr or 'unknown'}"


def verdict_routing_key(worker: str) -> str:
    return f"verdicts.{worker or 'worker'}"


def eve_alerts(verdicts: pa.Table) -> dict[str, bytes]:
    """Malicious rows of a verdict batch as NDJSON EVE alerts, grouped by source address.

    Built column-wise with Arrow string kernels: on a busy flow most rows can be alerts, and a
    per-row ``json.dumps`` would cost more than the model.
    """
    mal = verdicts.filter(verdicts.column("malicious"))
    if mal.num_rows == 0:
        return {}
    mal = mal.sort_by("src_addr")
    c = mal.column

    def text(name: str) -> pa.ChunkedArray:
        return pc.binary_join_element_wise('"', _json_escape(c(name)), '"', "")

    def num(arr) -> pa.ChunkedArray:
        return pc.cast(arr, pa.string())

    # One classify call stamps one time on its whole batch: format each distinct value once.
    stamps = pc.unique(c("verdict_ts_ns"))
    iso = pa.array([_iso(v) for v in stamps.to_pylist()])
    ts = pc.take(iso, pc.index_in(c("verdict_ts_ns"), stamps))
    severity = pc.if_else(pc.greater_equal(c("score"), 0.99), "1", "2")
    # the model's verdict keeps its signature; flows flagged only by a context detector name it
    only_context = pc.invert(pc.starts_with(pc.fill_null(c("detector"), ""), "model"))
    signature = pc.if_else(only_context,
                           pc.binary_join_element_wise('"phoenix.context: ', c("detector"), '"', ""),
                           '"phoenix.mlp: malicious flow"')
    parts = [
        '{"timestamp":"', ts, '","event_type":"alert","verdict_id":', text("verdict_id"),
        ',"device_id":', text("device_id"), ',"src_ip":', text("src_addr"), ',"src_port":', num(c("src_port")),
        ',"dest_ip":', text("dst_addr"), ',"dest_port":', num(c("dst_port")), ',"proto":', num(c("protocol")),
        ',"flow":{"start_ns":', num(c("first_seen_ns")), ',"end_ns":', num(c("last_seen_ns")),
        '},"alert":{"signature":', signature, ',"category":"Network traffic classified as malicious"'
        ',"detector":', text("detector"), ',"severity":', severity, ',"score":', num(c("score")), ',"threshold":', num(c("threshold")),
        ',"model_version":', text("model_version"), '},"latency_ms":', num(c("latency_ms")), "}\n",
    ]
    lines = pc.binary_join_element_wise(*parts, "").combine_chunks()
    # Rows are sorted by source; a group's NDJSON is one contiguous slice of the string buffer.
    srcs = c("src_addr").combine_chunks()
    bounds = np.flatnonzero(pc.not_equal(srcs[1:], srcs[:-1]).to_numpy(zero_copy_only=False)) + 1
    edges = [0, *bounds.tolist(), len(lines)]
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset:lines.offset + len(lines) + 1]
    data = lines.buffers()[2]
    return {srcs[a].as_py(): data[int(offsets[a]):int(offsets[b])].to_pybytes()
            for a, b in zip(edges[:-1], edges[1:], strict=True)}


def _iso(ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _json_escape(arr) -> pa.ChunkedArray:
    arr = pc.fill_null(arr, "")
    # Fast path: nearly every batch has nothing to escape, which a byte scan proves cheaply.
    raw = b"".join(chunk.buffers()[2].to_pybytes() for chunk in arr.chunks if chunk.buffers()[2] is not None)
    if b'"' not in raw and b"\\" not in raw and not (np.frombuffer(raw, np.uint8) < 0x20).any():
        return arr
    arr = pc.replace_substring(arr, "\\", "\\\\")
    arr = pc.replace_substring(arr, '"', '\\"')
    return pc.replace_substring_regex(arr, "[\\x00-\\x1f]", " ")


# --------------------------------------------------------------------------- dead letters

def dead_letter(
    reason: str,
    detail: str,
    *,
    body: bytes = b"",
    device_id: str = "",
    seq: int = -1,
    source: str = "",
    records: int = 0,
    received_ts_ns: int = 0,
    worker: str = "",
    head_bytes: int = 512,
) -> bytes:
    """A dead-letter record: why, where from, and the first bytes of what arrived."""
    doc = {
        "schema": SCHEMA_VERSION,
        "event_type": "dead_letter",
        "reason": reason,
        "detail": detail,
        "device_id": device_id,
        "seq": seq,
        "source": source,
        "records": records,
        "received_ts_ns": received_ts_ns,
        "worker": worker,
        "body_len": len(body),
        "body_head_b64": base64.b64encode(body[:head_bytes]).decode(),
    }
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
