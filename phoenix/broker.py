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

import pika
import pika.exceptions

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


class ConfirmedPublisher:
    """Publishes with publisher confirms; reconnects and re-sends on broker loss.

    ``publish`` returns only once the broker has confirmed the message, so a caller that
    acknowledges its own input after ``publish`` returns never loses data. A message may be
    sent twice around a reconnect: consumers drop duplicates by their ids.
    """

    def __init__(self, settings: Settings, *, declare: Iterable = (), what: str = "publisher") -> None:
        self.settings = settings
        self._declare = tuple(declare)
        self._what = what
        self._conn: pika.BlockingConnection | None = None
        self._ch = None
        self.reconnects = 0

    def _channel(self):
        if self._ch is None or not self._ch.is_open:
            self._conn = connect_retrying(self.settings, what=self._what)
            ch = self._conn.channel()
            for declare in self._declare:
                declare(ch, self.settings)
            ch.confirm_delivery()
            self._ch = ch
        return self._ch

    def publish(self, exchange: str, routing_key: str, body: bytes, *, content_type: str,
                headers: dict | None = None, persistent: bool = True) -> None:
        props = pika.BasicProperties(content_type=content_type, delivery_mode=2 if persistent else 1,
                                     headers=headers)
        while True:
            try:
                self._channel().basic_publish(exchange, routing_key, body, props, mandatory=False)
                return
            except pika.exceptions.NackError:
                log.warning("%s: broker nacked a message to %s; re-sending", self._what, exchange)
            except CONNECTION_ERRORS as exc:
                log.warning("%s: lost the broker (%s); reconnecting", self._what, exc.__class__.__name__)
                self._drop()
                self.reconnects += 1
                time.sleep(0.2)

    def _drop(self) -> None:
        try:
            if self._conn is not None and self._conn.is_open:
                self._conn.close()
        except Exception:  # noqa: BLE001 - closing a dead connection may raise anything pika has
            pass
        self._conn = self._ch = None

    def close(self) -> None:
        self._drop()
