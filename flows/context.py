"""Context detectors: port scans, host sweeps and SYN floods, judged across flows.

A single SYN that never completes a handshake looks the same whether it is one of a thousand
scan probes or a client hitting a closed port once, and the NF-v2 training data labels most such
vectors benign (docs/packets.md, "Feature drift"). Per flow, the model cannot tell them apart;
the pattern lives across flows. So metered flows pass through a second, stateful check beside the
model, with Zeek's scan policy as the model for thresholds:

* a *probe* is an unestablished attempt: a TCP flow whose client sent SYN but never ACK (SYN
  scans, SYN floods, connects refused with RST), a UDP flow that got no answer, or an ICMP echo
  request;
* ``port_scan``: one source probed >= ``port_scan_ports`` distinct ports of one host (TCP/UDP)
  within ``window_s`` (Zeek: 15 ports in 5 min);
* ``host_scan``: one source probed >= ``host_scan_hosts`` distinct hosts (TCP/ICMP) within
  ``window_s`` (Zeek: 25 hosts in 5 min);
* ``syn_flood``: one service (address, port) received >= ``flood_flows`` unestablished TCP flows
  within ``flood_window_s``, whatever their (often spoofed) sources.

Probe flows wait in the detector up to ``hold_s`` of processing time, so the first probes of a
scan are flagged with the rest once the threshold is crossed; every other flow goes straight on.
Windows run in event time (flow start). State is bounded: a key keeps its newest
threshold-many targets, at most ``max_entries`` (key, target) entries in all (oldest dropped
first, counted) and ``max_held`` waiting flows.
Offline (``phoenix scan``) nothing expires by wall time: a capture's flows are judged once all
of it is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flows.records import FlowRecords
from phoenix.config import stage_config_values
from phoenix.schema import FEATURES

PORT_SCAN, HOST_SCAN, SYN_FLOOD = 1, 2, 4
DETECTOR_NAMES = ((PORT_SCAN, "port_scan"), (HOST_SCAN, "host_scan"), (SYN_FLOOD, "syn_flood"))
_F = {name: i for i, name in enumerate(FEATURES)}
_SYN, _ACK = 0x02, 0x10
_ECHO_REQUEST = 8 * 256  # ICMP_TYPE is type * 256 + code


@dataclass(frozen=True)
class ContextConfig:
    """Detector settings; ``PHOENIX_CONTEXT_<NAME>`` overrides each default."""

    enabled: bool = True
    window_s: float = 300.0       # Zeek scan.zeek: scan_interval 5 min
    port_scan_ports: int = 15     # Zeek: port_scan_threshold
    host_scan_hosts: int = 25     # Zeek: addr_scan_threshold
    flood_window_s: float = 10.0
    flood_flows: int = 100
    hold_s: float = 5.0           # longest a probe flow waits for its verdict (processing time)
    max_entries: int = 262_144
    max_held: int = 65_536

    @classmethod
    def from_env(cls, settings: object | None = None) -> ContextConfig:
        return cls(**stage_config_values(cls, "PHOENIX_CONTEXT_", settings, "context_"))


def probe_kinds(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks of unestablished TCP attempts, unanswered UDP flows and ICMP echo requests."""
    proto = features[:, _F["PROTOCOL"]]
    client = features[:, _F["CLIENT_TCP_FLAGS"]].astype(np.int64)
    tcp = (proto == 6) & ((client & _SYN) != 0) & ((client & _ACK) == 0)
    udp = (proto == 17) & (features[:, _F["OUT_PKTS"]] == 0)
    icmp = (proto == 1) & (features[:, _F["ICMP_TYPE"]] == _ECHO_REQUEST)
    return tcp, udp, icmp


def probe_mask(features: np.ndarray) -> np.ndarray:
    tcp, udp, icmp = probe_kinds(features)
    return tcp | udp | icmp


def _hash(*cols: object) -> np.ndarray:
    return pd.util.hash_pandas_object(pd.DataFrame(dict(enumerate(cols))), index=False).to_numpy(np.uint64)


def _targets(rec: FlowRecords) -> tuple[np.ndarray, np.ndarray]:
    """Per row of probe flows: the three detector keys (0 = not counted) and the three targets."""
    k = rec.keys
    src = k.column("src_addr").to_numpy(zero_copy_only=False)
    dst = k.column("dst_addr").to_numpy(zero_copy_only=False)
    dport = k.column("dst_port").to_numpy().astype(np.int64)
    n = len(rec)
    tcp, udp, icmp = probe_kinds(rec.features)
    keys = np.zeros((n, 3), np.uint64)
    targets = np.zeros((n, 3), np.uint64)
    keys[:, 0] = np.where(tcp | udp, _hash(np.full(n, PORT_SCAN), src, dst), 0)
    targets[:, 0] = dport.astype(np.uint64)
    keys[:, 1] = np.where(tcp | icmp, _hash(np.full(n, HOST_SCAN), src), 0)
    targets[:, 1] = _hash(dst)
    keys[:, 2] = np.where(tcp, _hash(np.full(n, SYN_FLOOD), dst, dport), 0)
    targets[:, 2] = _hash(k.column("verdict_id").to_numpy(zero_copy_only=False))
    return keys, targets


@dataclass
class ContextStats:
    probes: int = 0
    flagged: int = 0
    released_unflagged: int = 0
    entries_dropped: int = 0   # window entries dropped early because max_entries was reached
    held_overflow: int = 0     # probe flows released early because max_held was reached


class ContextDetector:
    """Holds probe flows and the per-key windows; see the module docstring."""

    def __init__(self, config: ContextConfig | None = None) -> None:
        self.config = config or ContextConfig()
        c = self.config
        self._thresholds = np.array([c.port_scan_ports, c.host_scan_hosts, c.flood_flows], np.int64)
        self._windows = np.array([c.window_s, c.window_s, c.flood_window_s]) * 1e9
        self.stats = ContextStats()
        self.now_ns = 0  # event time: newest probe flow start seen
        # window entries: one row per distinct (detector, key, target), newest event time
        self._kind = np.zeros(0, np.int8)
        self._key = np.zeros(0, np.uint64)
        self._target = np.zeros(0, np.uint64)
        self._ts = np.zeros(0, np.int64)
        self._flagged: list[np.ndarray] = [np.zeros(0, np.uint64)] * 3  # sorted keys over threshold
        # probe flows waiting for a decision
        self._held: FlowRecords | None = None
        self._held_keys = np.zeros((0, 3), np.uint64)
        self._held_since = np.zeros(0, np.int64)

    @property
    def held(self) -> int:
        return 0 if self._held is None else len(self._held)

    def add(self, records: FlowRecords, now_ns: int = 0) -> list[FlowRecords]:
        """Take any flows; return those decided now (``context`` set), holding undecided probes."""
        mask = probe_mask(records.features)
        out: list[FlowRecords] = []
        if not mask.all():
            out.append(records.take(~mask).with_context(np.zeros(int((~mask).sum()), np.uint8)))
        if mask.any():
            probes = records.take(mask)
            self.stats.probes += len(probes)
            keys, targets = _targets(probes)
            self._count(keys, targets, probes.keys.column("first_seen_ns").to_numpy())
            self._hold(probes, keys, now_ns)
            bits = self._decide()
            out.extend(self._release(bits > 0, bits))
        return [r for r in out if len(r)]

    def expire(self, now_ns: int) -> list[FlowRecords]:
        """Release probe flows held longer than ``hold_s`` of processing time, decided as they stand."""
        if self._held is None:
            return []
        return self._release(self._held_since <= now_ns - int(self.config.hold_s * 1e9), self._decide())

    def flush(self) -> list[FlowRecords]:
        """Release every held flow (end of input)."""
        if self._held is None:
            return []
        return self._release(np.ones(len(self._held), bool), self._decide())

    def next_expiry_ns(self) -> int | None:
        if self._held is None:
            return None
        return int(self._held_since.min() + self.config.hold_s * 1e9)

    # ----------------------------------------------------------------- internals

    def _count(self, keys: np.ndarray, targets: np.ndarray, ts: np.ndarray) -> None:
        used = keys != 0
        kind = np.broadcast_to(np.arange(3, dtype=np.int8), keys.shape)[used]
        self._kind = np.concatenate([self._kind, kind])
        self._key = np.concatenate([self._key, keys[used]])
        self._target = np.concatenate([self._target, targets[used]])
        self._ts = np.concatenate([self._ts, np.broadcast_to(ts[:, None], keys.shape)[used]])
        if len(ts):
            self.now_ns = max(self.now_ns, int(ts.max()))
        # distinct (key, target): keep the newest time of each
        order = np.lexsort((self._ts, self._target, self._key))
        k, t = self._key[order], self._target[order]
        last = np.ones(len(order), bool)
        last[:-1] = (k[1:] != k[:-1]) | (t[1:] != t[:-1])
        keep = order[last]
        keep = keep[self._ts[keep] >= self.now_ns - self._windows[self._kind[keep]]]
        # A key needs only its newest `threshold` targets to be judged: a flood's thousands of
        # flows then cost 100 entries and cannot push other keys' evidence out of the table.
        by_key = keep[np.lexsort((self._ts[keep], self._key[keep]))]
        k = self._key[by_key]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        ends = np.repeat(np.r_[starts[1:], len(k)], np.diff(np.r_[starts, len(k)]))
        keep = by_key[ends - np.arange(len(k)) <= self._thresholds[self._kind[by_key]]]
        if len(keep) > self.config.max_entries:
            self.stats.entries_dropped += len(keep) - self.config.max_entries
            keep = np.sort(keep[np.argsort(self._ts[keep], kind="stable")[-self.config.max_entries:]])
        self._kind, self._key, self._target, self._ts = (
            self._kind[keep], self._key[keep], self._target[keep], self._ts[keep])
        uniq, first, counts = np.unique(self._key, return_index=True, return_counts=True)
        over = counts >= self._thresholds[self._kind[first]]
        self._flagged = [np.sort(uniq[over & (self._kind[first] == j)]) for j in range(3)]

    def _hold(self, probes: FlowRecords, keys: np.ndarray, now_ns: int) -> None:
        parts = [probes] if self._held is None else [self._held, probes]
        self._held = FlowRecords.concat(parts)
        self._held_keys = np.concatenate([self._held_keys, keys])
        self._held_since = np.concatenate([self._held_since, np.full(len(probes), now_ns, np.int64)])

    def _decide(self) -> np.ndarray:
        bits = np.zeros(len(self._held_keys), np.uint8)
        for j, (bit, _) in enumerate(DETECTOR_NAMES):
            col = self._held_keys[:, j]
            hit = (col != 0) & np.isin(col, self._flagged[j])
            bits |= np.where(hit, bit, 0).astype(np.uint8)
        return bits

    def _release(self, go: np.ndarray, bits: np.ndarray) -> list[FlowRecords]:
        """Send the held flows selected by ``go`` on, with ``bits`` (from :meth:`_decide`)."""
        assert self._held is not None
        overflow = len(self._held) - int(go.sum()) - self.config.max_held
        if overflow > 0:  # bound memory: the oldest undecided flows leave as they stand
            stay = np.flatnonzero(~go)
            go = go.copy()
            go[stay[np.argsort(self._held_since[stay], kind="stable")[:overflow]]] = True
            self.stats.held_overflow += overflow
        if not go.any():
            return []
        bits = bits[go]
        out = self._held.take(go).with_context(bits)
        self.stats.flagged += int((bits > 0).sum())
        self.stats.released_unflagged += int((bits == 0).sum())
        if go.all():
            self._held, self._held_keys, self._held_since = None, np.zeros((0, 3), np.uint64), np.zeros(0, np.int64)
        else:
            self._held = self._held.take(~go)
            self._held_keys, self._held_since = self._held_keys[~go], self._held_since[~go]
        return [out]

    def snapshot(self) -> dict:
        return {"now_ns": self.now_ns, "kind": self._kind, "key": self._key, "target": self._target,
                "ts": self._ts, "flagged": self._flagged, "held": self._held, "held_keys": self._held_keys,
                "held_since": self._held_since}

    @classmethod
    def restore(cls, snap: dict, config: ContextConfig | None = None) -> ContextDetector:
        d = cls(config)
        d.now_ns = snap["now_ns"]
        d._kind, d._key, d._target, d._ts = snap["kind"], snap["key"], snap["target"], snap["ts"]
        d._flagged = snap["flagged"]
        d._held, d._held_keys, d._held_since = snap["held"], snap["held_keys"], snap["held_since"]
        return d


# "detector" text for code = model bit | context bits << 1
_VERDICT_DETECTORS = pa.array(["+".join((["model"] if c & 1 else []) +
                                        [name for bit, name in DETECTOR_NAMES if (c >> 1) & bit])
                               for c in range(16)], pa.string())


def verdict_labels(model_malicious: np.ndarray, context: np.ndarray | None) -> tuple[np.ndarray, pa.Array]:
    """Final label and the ``detector`` column: which of the model and the detectors fired."""
    code = model_malicious.astype(np.int64)
    if context is not None:
        code = code | (context.astype(np.int64) << 1)
    return code > 0, pc.take(_VERDICT_DETECTORS, pa.array(code))


# --------------------------------------------------------------------------- dataflow stage

TICK = timedelta(seconds=1)


def context_stage(step_id: str, flows, settings: object):  # noqa: ANN001 - bytewax Streams
    """Route probe flows through one keyed :class:`ContextDetector`; other flows pass by.

    One key: a scan's probes are dealt to every meter shard (the flow hash), so they must meet in
    one place. Only probe flows take this path, a small share of normal traffic.
    """
    import time

    from bytewax import operators as op
    from bytewax.operators import StatefulBatchLogic

    cfg = ContextConfig.from_env(settings)
    if not cfg.enabled:
        return flows

    class _Logic(StatefulBatchLogic):
        def __init__(self, det: ContextDetector) -> None:
            self.det = det

        def on_batch(self, values: list[FlowRecords]) -> tuple[list[FlowRecords], bool]:
            now = time.time_ns()
            return self.det.add(FlowRecords.concat(values), now) + self.det.expire(now), StatefulBatchLogic.RETAIN

        def on_notify(self) -> tuple[list[FlowRecords], bool]:
            return self.det.expire(time.time_ns()), StatefulBatchLogic.RETAIN

        def on_eof(self) -> tuple[list[FlowRecords], bool]:
            return self.det.flush(), StatefulBatchLogic.RETAIN

        def notify_at(self) -> datetime | None:
            due = self.det.next_expiry_ns()
            if due is None:
                return None
            return max(datetime.fromtimestamp(due / 1e9, UTC), datetime.now(UTC) + TICK / 10)

        def snapshot(self) -> dict:
            return self.det.snapshot()

    def split(rec: FlowRecords) -> list[tuple[str, FlowRecords]]:
        mask = probe_mask(rec.features)
        if not mask.any():
            return [("pass", rec)]
        if mask.all():
            return [("probe", rec)]
        return [("pass", rec.take(~mask)), ("probe", rec.take(mask))]

    tagged = op.flat_map(f"{step_id}_split", flows, split)
    b = op.branch(f"{step_id}_is_probe", tagged, lambda x: x[0] == "probe")
    keyed = op.map(f"{step_id}_key", b.trues, lambda x: ("context", x[1]))
    passing = op.map(f"{step_id}_pass", b.falses, lambda x: x[1])

    def build(resume: dict | None) -> _Logic:
        return _Logic(ContextDetector.restore(resume, cfg) if resume else ContextDetector(cfg))

    judged = op.map(f"{step_id}_unkey", op.stateful_batch(f"{step_id}_detect", keyed, build), lambda kv: kv[1])
    return op.merge(f"{step_id}_merge", passing, judged)
