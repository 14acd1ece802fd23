"""Bytewax connectors that hide the broker: a replayable stream source and confirmed sinks.

The source is a ``FixedPartitionedSource`` with one partition per request stream; its snapshot
is the offset of the last message it emitted. With Bytewax recovery (``-r DIR -s N -b N``) a
restarted process resumes each partition right after that offset, so every message is read at
least once. The sinks return from ``write_batch`` only after the broker confirmed every message,
and Bytewax commits an epoch's snapshot only after its sinks have written, so a verdict for every
record is durable before its input offset is ever committed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pika
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from phoenix import broker, schema
from phoenix.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One request message as read from a stream."""

    stream: str
    offset: int
    body: bytes
    content_type: str | None
    received_ns: int

    @property
    def source(self) -> str:
        return f"{self.stream}@{self.offset}"


@dataclass(frozen=True)
class CaughtUp:
    """A partition had nothing left to deliver at ``drained_ns``: every request its devices
    published before then has entered the dataflow. The flow meter uses it to let a quiet
    device's event time advance without splitting the flows of one whose requests still queue."""

    stream: str
    drained_ns: int


CAUGHT_UP_EVERY_NS = 250_000_000


class _StreamPartition(StatefulSourcePartition[Delivery | CaughtUp, int]):
    def __init__(self, settings: Settings, stream: str, resume_offset: int | None) -> None:
        self.settings = settings
        self.stream = stream
        # Offset of the last message handed to the dataflow; the snapshot.
        self.last_emitted: int | None = resume_offset
        self._buffer: list[Delivery] = []
        self._last_tag = 0
        self._conn: pika.BlockingConnection | None = None
        self._ch = None
        self._awake: datetime | None = None
        self._retry_delay = 0.2
        self._max_wait_ns = int(settings.batch_max_wait_ms * 1e6)
        self._caught_up_ns = 0

    def _start_offset(self):
        if self.last_emitted is not None:
            return self.last_emitted + 1
        start = self.settings.stream_start
        return int(start) if start.lstrip("-").isdigit() else start

    def _connect(self) -> None:
        self._conn = broker.connect(self.settings)
        ch = self._conn.channel()
        broker.declare_requests(ch, self.settings)
        broker.declare_outputs(ch, self.settings)
        # Stream consumers need a prefetch and acks, which only return credit.
        # Credit bounds memory: at most this many messages (each ≤ max_message_bytes) in flight.
        ch.basic_qos(prefetch_count=256)
        ch.basic_consume(self.stream, self._on_message, auto_ack=False,
                         arguments={"x-stream-offset": self._start_offset()})
        self._ch = ch
        self._buffer.clear()
        self._retry_delay = 0.2
        log.info("reading %s from offset %s", self.stream, self._start_offset())

    def _on_message(self, ch, method, props, body: bytes) -> None:
        offset = (props.headers or {}).get("x-stream-offset", -1)
        self._last_tag = method.delivery_tag
        if self.last_emitted is not None and offset <= self.last_emitted:
            return  # a stream may resend the chunk holding the start offset
        self._buffer.append(Delivery(self.stream, int(offset), body, props.content_type, time.time_ns()))

    def next_batch(self) -> list[Delivery | CaughtUp]:
        try:
            if self._ch is None:
                self._connect()
            self._conn.process_data_events(time_limit=0)
            if self._last_tag:
                self._ch.basic_ack(self._last_tag, multiple=True)
                self._last_tag = 0
        except broker.CONNECTION_ERRORS as exc:
            log.warning("%s: broker unavailable (%s); retrying in %.1fs", self.stream,
                        exc.__class__.__name__, self._retry_delay)
            self._drop()
            self._awake = datetime.now(UTC) + timedelta(seconds=self._retry_delay)
            self._retry_delay = min(self._retry_delay * 2, 5.0)
            return []
        if not self._buffer:
            self._awake = datetime.now(UTC) + timedelta(milliseconds=1)
            now = time.time_ns()
            if now - self._caught_up_ns >= CAUGHT_UP_EVERY_NS:
                self._caught_up_ns = now
                return [CaughtUp(self.stream, now)]
            return []
        # Hold a small batch back until it is big enough or old enough: bounded by size and time.
        if len(self._buffer) < 64 and time.time_ns() - self._buffer[0].received_ns < self._max_wait_ns:
            self._awake = datetime.now(UTC) + timedelta(milliseconds=1)
            return []
        out, self._buffer = self._buffer, []
        self.last_emitted = out[-1].offset
        self._awake = None
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int | None:
        return self.last_emitted

    def _drop(self) -> None:
        broker.close_quietly(self._conn)
        self._conn = self._ch = None
        self._buffer.clear()
        self._last_tag = 0  # delivery tags belong to the dead channel

    def close(self) -> None:
        self._drop()


class RequestStreamSource(FixedPartitionedSource[Delivery | CaughtUp, int]):
    """Reads the ``phoenix.requests.<p>`` streams, one Bytewax partition each; while a partition
    is drained it also emits a :class:`CaughtUp` mark every 250 ms."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def list_parts(self) -> list[str]:
        return [self.settings.request_stream(p) for p in range(self.settings.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _StreamPartition:
        return _StreamPartition(self.settings, for_part, resume_state)


class _Counter:
    """Counts by name and logs a summary line at most every ``every_s`` seconds."""

    def __init__(self, what: str, every_s: float = 10.0) -> None:
        self.what = what
        self.every_s = every_s
        self.counts: dict[str, int] = {}
        self._last = time.monotonic()

    def add(self, **counts: int) -> None:
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        if time.monotonic() - self._last >= self.every_s:
            self.log()

    def log(self) -> None:
        self._last = time.monotonic()
        if self.counts:
            log.info("%s: %s", self.what, ", ".join(f"{k} {v:,}" for k, v in sorted(self.counts.items())))


class _VerdictPartition(StatelessSinkPartition):
    def __init__(self, settings: Settings, worker: str) -> None:
        self.settings = settings
        self.routing_key = schema.verdict_routing_key(worker)
        self.publisher = ConfirmedOutputs(settings, "verdict sink")
        self.counter = _Counter(f"verdict sink {worker}")

    def write_batch(self, items: list) -> None:
        ex = self.settings.alerts_exchange
        out: list[broker.Outgoing] = []
        for verdicts in items:
            out.append(broker.Outgoing(ex, self.routing_key, schema.encode_table(verdicts), schema.ARROW_CONTENT_TYPE))
            alerts = schema.eve_alerts(verdicts)
            out += [broker.Outgoing(ex, schema.alert_routing_key(src), ndjson, schema.NDJSON_CONTENT_TYPE)
                    for src, ndjson in alerts.items()]
            malicious = sum(body.count(b"\n") for body in alerts.values())
            self.counter.add(verdicts=verdicts.num_rows, malicious=malicious, alert_messages=len(alerts))
        # One confirm wait for the whole batch: returns only when the broker has all of it.
        self.publisher.publish_many(out)

    def close(self) -> None:
        self.counter.log()
        self.publisher.close()


class VerdictSink(DynamicSink):
    """Verdict batches (Arrow) and per-source EVE alert batches to the alerts exchange."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _VerdictPartition:
        return _VerdictPartition(self.settings, f"{self.settings.worker_name or 'w'}{worker_index}")


class _DeadLetterPartition(StatelessSinkPartition):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.publisher = ConfirmedOutputs(settings, "dead-letter sink")
        self.counter = _Counter("dead letters", every_s=5.0)

    def write_batch(self, items: list[bytes]) -> None:
        self.publisher.publish_many([broker.Outgoing(self.settings.deadletter_exchange, "", doc,
                                                     schema.JSON_CONTENT_TYPE) for doc in items])
        for doc in items:
            self.counter.add(**{json.loads(doc)["reason"]: 1})

    def close(self) -> None:
        self.counter.log()
        self.publisher.close()


class DeadLetterSink(DynamicSink):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        return _DeadLetterPartition(self.settings)


def ConfirmedOutputs(settings: Settings, what: str) -> broker.ConfirmedPublisher:  # noqa: N802
    """A confirmed publisher that declares the output topology on every (re)connect."""
    return broker.ConfirmedPublisher(settings, declare=(broker.declare_outputs,), what=what)
