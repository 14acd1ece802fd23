"""The shared consumer against the real broker (unique exchange, deleted afterwards)."""

from __future__ import annotations

import os
import socket
import time
import uuid

import pika
import pika.exceptions
import pytest

from dashboards.consumer import SharedConsumer, wait_connected
from dashboards.state import LiveState
from dashboards.synth import publish_batch, verdict_batch
from phoenix.config import Settings

AMQP_URL = os.environ.get("PHOENIX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

pytestmark = pytest.mark.broker


@pytest.fixture()
def channel():
    try:
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    except pika.exceptions.AMQPError as exc:
        pytest.skip(f"no RabbitMQ: {exc!r}")
    ch = conn.channel()
    yield ch
    if conn.is_open:
        conn.close()


def _until(pred, timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_consumes_verdicts_and_alerts_and_counts_bad_messages(channel) -> None:
    exchange = f"phoenix.test.{uuid.uuid4().hex[:10]}"
    settings = Settings.from_env(amqp_url=AMQP_URL, alerts_exchange=exchange)
    state = LiveState(snapshot_every=0.0)
    consumer = SharedConsumer(settings, state)
    consumer.start()
    try:
        assert wait_connected(consumer, 15), state.status_detail
        channel.exchange_declare(exchange, exchange_type="topic", durable=True, passive=True)
        alerts = 0
        for i in range(3):
            alerts += publish_batch(channel, exchange, verdict_batch(1000, worker=f"w{i}", start_seq=i * 1000))
        channel.basic_publish(exchange, "verdicts.bad", b"not arrow at all")
        channel.basic_publish(exchange, "unrelated.key", b"ignored: not bound")
        assert _until(lambda: state.snapshot().total == 3000 and state.snapshot().bad_messages == 1)
        assert _until(lambda: state.snapshot().alerts_total == alerts)
        snap = state.snapshot()
        assert snap.malicious == 750 and snap.status == "connected"
        assert dict(snap.workers) == {"w0": 1000, "w1": 1000, "w2": 1000}
    finally:
        consumer.stop()
        channel.exchange_delete(exchange)
    assert state.status == "stopped"


def test_broker_unreachable_is_reported_without_the_password() -> None:
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(amqp_url=f"amqp://guest:topsecret@127.0.0.1:{port}/%2F",
                        alerts_exchange=f"phoenix.test.{uuid.uuid4().hex[:10]}")
    state = LiveState(broker=settings.safe_url, snapshot_every=0.0)
    consumer = SharedConsumer(settings, state, retry_delay=0.2, max_retry_delay=0.5)
    consumer.start()
    try:
        assert _until(lambda: state.status == "disconnected", 10)
        snap = state.snapshot()
        assert "topsecret" not in snap.broker + snap.status_detail
        assert "***" in snap.broker
        assert consumer.is_alive()  # keeps retrying in the background
    finally:
        consumer.stop()
