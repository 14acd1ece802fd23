"""RabbitMQ plumbing shared by devices, the dataflow and the dashboard.

Topology (declared idempotently by whoever connects first):

* ``phoenix.requests`` (direct) → streams ``phoenix.requests.<p>`` bound with routing key ``<p>``.
  Streams, not classic queues: they are replayable, so a restarted dataflow re-reads from its
  last snapshotted offset, and nothing a device had confirmed can be lost (DESIGN.md route 1).
* ``phoenix.alerts`` (topic) → stream ``phoenix.verdicts`` bound to ``verdicts.#`` so every
  verdict batch is kept for the archive, the dashboard and audits; SOC tools bind ``alert.#``.
* ``phoenix.deadletter`` (fanout) → durable queue ``phoenix.deadletter`` (bounded, overflow
  drops the oldest).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import pika
import pika.exceptions
import pika.spec

from phoenix.config import Settings

log = logging.getLogger(__name__)

# What a lost broker looks like through pika; every reconnect loop catches exactly these.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    ConnectionError,
    OSError,
)


def connect(settings: Settings, *, heartbeat: int = 30) -> pika.BlockingConnection:
    params = pika.URLParameters(settings.amqp_url)
    params.heartbeat = heartbeat
    params.blocked_connection_timeout = 60
    params.connection_attempts = 1
    return pika.BlockingConnection(params)


def connect_retrying(settings: Settings, *, deadline_s: float = float("inf"), what: str = "broker") -> pika.BlockingConnection:
    """Connect, retrying with capped backoff until ``deadline_s`` seconds have passed."""
    start = time.monotonic()
    delay = 0.2
    while True:
        try:
            return connect(settings)
        except CONNECTION_ERRORS as exc:
            if time.monotonic() - start + delay > deadline_s:
                raise
            log.warning("%s at %s unreachable (%s); retrying in %.1fs", what, settings.safe_url,
                        exc.__class__.__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def close_quietly(conn: pika.BlockingConnection | None) -> None:
    """Close a connection that may already be dead."""
    try:
        if conn is not None and conn.is_open:
            conn.close()
    except Exception:  # noqa: BLE001 - closing a dead connection may raise anything pika has
        pass


def partition_of(key: str, partitions: int) -> int:
    """Stable partition for a device id: the same device always lands on the same stream."""
    return zlib.crc32(key.encode()) % partitions


def declare_requests(channel, settings: Settings) -> None:
    channel.exchange_declare(settings.requests_exchange, exchange_type="direct", durable=True)
    for p in range(settings.partitions):
        stream = settings.request_stream(p)
        _declare_stream(channel, stream, settings.stream_max_bytes)
        channel.queue_bind(stream, settings.requests_exchange, routing_key=str(p))


def declare_outputs(channel, settings: Settings) -> None:
    channel.exchange_declare(settings.alerts_exchange, exchange_type="topic", durable=True)
    _declare_stream(channel, settings.verdicts_stream, settings.stream_max_bytes)
    channel.queue_bind(settings.verdicts_stream, settings.alerts_exchange, routing_key="verdicts.#")
    channel.exchange_declare(settings.deadletter_exchange, exchange_type="fanout", durable=True)
    channel.queue_declare(settings.deadletter_queue, durable=True,
                          arguments={"x-max-length": settings.deadletter_max, "x-overflow": "drop-head"})
    channel.queue_bind(settings.deadletter_queue, settings.deadletter_exchange)


def _declare_stream(channel, name: str, max_bytes: int) -> None:
    channel.queue_declare(name, durable=True, arguments={
        "x-queue-type": "stream",
        "x-max-length-bytes": max_bytes,
        "x-stream-max-segment-size-bytes": 50_000_000,
    })


def delete_topology(settings: Settings) -> None:
    """Remove every exchange and queue of ``settings`` (tests use unique names)."""
    conn = connect(settings)
    try:
        ch = conn.channel()
        for p in range(settings.partitions):
            ch.queue_delete(settings.request_stream(p))
        for q in (settings.verdicts_stream, settings.deadletter_queue):
            ch.queue_delete(q)
        for ex in (settings.requests_exchange, settings.alerts_exchange, settings.deadletter_exchange):
            ch.exchange_delete(ex)
    finally:
        conn.close()


@dataclass(frozen=True)
class Outgoing:
    exchange: str
    routing_key: str
    body: bytes
    content_type: str


class _ConfirmPipeline:
    """One channel in confirm mode whose publishes share a single wait for the broker's acks.

    pika's BlockingChannel waits for each confirm in turn (one round trip per message); its
    underlying asynchronous channel lets a batch of messages go out back to back and be confirmed
    together (acks may cover many delivery tags at once).
    """

    def __init__(self, conn: pika.BlockingConnection) -> None:
        self.conn = conn
        self.channel = conn.channel()
        self.impl = self.channel._impl  # noqa: SLF001 - the async channel under the blocking one
        self.next_tag = 1
        self.unconfirmed: dict[int, Outgoing] = {}
        self.nacked: list[Outgoing] = []
        ready: list[bool] = []
        self.impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _frame: ready.append(True))
        deadline = time.monotonic() + 30
        while not ready:
            self._pump(deadline)

    def _on_confirm(self, frame) -> None:
        m = frame.method
        tags = [t for t in self.unconfirmed if t <= m.delivery_tag] if m.multiple else [m.delivery_tag]
        nack = isinstance(m, pika.spec.Basic.Nack)
        for t in tags:
            msg = self.unconfirmed.pop(t, None)
            if nack and msg is not None:
                self.nacked.append(msg)

    def _pump(self, deadline: float, waited: float = 0.0) -> None:
        # Confirms on the async channel do not wake a blocking wait, which would sleep out its
        # whole time limit: poll without blocking while a confirm is due (a loopback round trip
        # is ~0.3 ms), then back off to 1 ms sleeps so a slow broker is not spun on.
        self.conn.process_data_events(time_limit=0 if waited < 0.003 else 0.001)
        if self.channel.is_closed:
            raise pika.exceptions.ChannelClosed(0, "channel closed while waiting for confirms")
        if time.monotonic() > deadline:
            raise ConnectionError("no confirms from the broker for 30 s")

    def send(self, messages: list[Outgoing]) -> list[Outgoing]:
        """Publish all, wait until each is acked or nacked; returns the nacked ones."""
        for m in messages:
            props = pika.BasicProperties(content_type=m.content_type, delivery_mode=2)
            self.impl.basic_publish(m.exchange, m.routing_key, m.body, props)
            self.unconfirmed[self.next_tag] = m
            self.next_tag += 1
        start = time.monotonic()
        deadline = start + 30
        while self.unconfirmed:
            self._pump(deadline, time.monotonic() - start)
        nacked, self.nacked = self.nacked, []
        return nacked


class ConfirmedPublisher:
    """Publishes with publisher confirms; reconnects and re-sends on broker loss.

    ``publish``/``publish_many`` return only once the broker has confirmed every message, so a
    caller that acknowledges its own input afterwards never loses data. A message may be sent
    twice around a reconnect: consumers drop duplicates by their ids.
    """

    def __init__(self, settings: Settings, *, declare: Iterable = (), what: str = "publisher") -> None:
        self.settings = settings
        self._declare = tuple(declare)
        self._what = what
        self._conn: pika.BlockingConnection | None = None
        self._pipe: _ConfirmPipeline | None = None
        self.reconnects = 0

    def _pipeline(self) -> _ConfirmPipeline:
        if self._pipe is None or self._pipe.channel.is_closed or not self._conn.is_open:
            self._drop()
            self._conn = connect_retrying(self.settings, what=self._what)
            ch = self._conn.channel()
            for declare in self._declare:
                declare(ch, self.settings)
            ch.close()
            self._pipe = _ConfirmPipeline(self._conn)
        return self._pipe

    def publish(self, exchange: str, routing_key: str, body: bytes, *, content_type: str) -> None:
        self.publish_many([Outgoing(exchange, routing_key, body, content_type)])

    def publish_many(self, messages: list[Outgoing]) -> None:
        pending = list(messages)
        while pending:
            pipe = None
            try:
                pipe = self._pipeline()
                pending = pipe.send(pending)
                if pending:
                    log.warning("%s: broker nacked %d message(s); re-sending", self._what, len(pending))
            except CONNECTION_ERRORS as exc:
                log.warning("%s: lost the broker (%s); reconnecting", self._what, exc.__class__.__name__)
                if pipe is not None:  # everything not confirmed goes again
                    pending = [*pipe.unconfirmed.values(), *pipe.nacked]
                self._drop()
                self.reconnects += 1
                time.sleep(0.2)

    def _drop(self) -> None:
        close_quietly(self._conn)
        self._conn = self._pipe = None

    def close(self) -> None:
        self._drop()
