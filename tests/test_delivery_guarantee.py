"""Nothing a device published with a confirm is lost: SIGKILL a dataflow process mid-stream,
restart it from its recovery snapshot, restart the broker too, and count verdicts."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pika
import pytest

from capture.replay_netflow import device_id, replay
from phoenix import broker
from phoenix.verdicts import read_verdict_stream
from tests.conftest import REPLAY_CSV

pytestmark = [pytest.mark.broker, pytest.mark.slow]

RECORDS = 60_000
BATCH = 500
DEVICES = 6


def _restart_broker() -> None:
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)


def _wait_broker(settings, timeout: float = 60) -> None:
    broker.connect_retrying(settings, deadline_s=timeout).close()


def _wait_verdict_messages(settings, n: int, df, timeout: float = 60, more_than_now: bool = False) -> None:
    """Wait until ``df`` has published ``n`` verdict messages, so a failure lands mid-stream."""
    conn = broker.connect(settings)
    if more_than_now:
        try:
            n += conn.channel().queue_declare(settings.verdicts_stream, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            pass
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and df.alive():
            try:
                q = conn.channel().queue_declare(settings.verdicts_stream, passive=True)
                if q.method.message_count >= n:
                    return
            except pika.exceptions.ChannelClosedByBroker:
                pass  # not declared yet: the flow is still starting
            time.sleep(0.1)
    finally:
        conn.close()
    raise AssertionError(f"no verdicts from the first process: {df.output()[-2000:]}")


def _where_is(settings, device: str, seq: int) -> list[str]:
    """Diagnostics: which request streams hold a given device message."""
    from phoenix import schema
    found = []
    conn = broker.connect(settings)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1000)
    for p in range(settings.partitions):
        for method, props, body in ch.consume(settings.request_stream(p), inactivity_timeout=1.0,
                                              arguments={"x-stream-offset": "first"}):
            if method is None:
                break
            ch.basic_ack(method.delivery_tag)
            req = schema.decode_request(body)
            if req.device_id == device and req.seq == seq:
                found.append(f"{settings.request_stream(p)}@{props.headers['x-stream-offset']}")
        ch.cancel()
    conn.close()
    return found


def test_sigkill_and_broker_restart_lose_nothing(broker_settings, start_dataflow, tmp_path):
    s = broker_settings
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True)

    first = start_dataflow(s, recovery=recovery)
    result: dict = {}
    devices = threading.Thread(target=lambda: result.update(replay(
        [str(REPLAY_CSV)], devices=DEVICES, rate=2_500, batch=BATCH, limit=RECORDS, loop=True,
        settings=s, progress=False)))
    devices.start()

    _wait_verdict_messages(s, 5, first)
    first.kill()  # SIGKILL mid-stream: no chance to flush or snapshot
    assert first.proc.returncode == -9
    time.sleep(1.0)
    second = start_dataflow(s, recovery=recovery)

    # Restart the broker once the new process is working (or after a while on a slow machine),
    # while the devices are still publishing.
    try:
        _wait_verdict_messages(s, 1, second, timeout=8, more_than_now=True)
    except AssertionError:
        pass
    _restart_broker()  # devices, source and sinks must all reconnect by themselves
    _wait_broker(s)

    devices.join(timeout=180)
    assert not devices.is_alive()
    assert result["records"] == RECORDS
    assert result["reconnects"] >= 1, "the broker restart should have landed while devices were publishing"

    # Every (device, seq, row) the replay confirmed must have a verdict.
    messages = RECORDS // BATCH
    expect = {f"{device_id(m % DEVICES)}:{m // DEVICES}:{r}" for m in range(messages) for r in range(BATCH)}
    verdicts = read_verdict_stream(s, expect_ids=expect, timeout=120)
    ids = verdicts.column("verdict_id").to_pylist()
    missing = expect - set(ids)
    if missing:
        dev, seq, _ = sorted(missing)[0].split(":")
        where = _where_is(s, dev, int(seq))
        raise AssertionError(f"{len(missing)} records without a verdict, e.g. {sorted(missing)[:3]}; "
                             f"request found at {where}; log: {second.output()[-3000:]}")
    duplicates = len(ids) - len(set(ids))
    print(f"\ndelivery: {RECORDS} records, {len(ids)} verdicts, {duplicates} duplicates "
          f"(same verdict id), device reconnects {result['reconnects']}")
    # Duplicates are allowed, but they must be the same verdict: same id → same score.
    scores: dict[str, float] = {}
    for vid, score in zip(ids, verdicts.column("score").to_pylist(), strict=True):
        assert scores.setdefault(vid, score) == pytest.approx(score, abs=1e-6)
    assert second.alive()
