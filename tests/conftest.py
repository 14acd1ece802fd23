"""Shared fixtures: unique broker names per test, a running dataflow, a verdict collector.

Broker tests talk to the real RabbitMQ at PHOENIX_AMQP_URL (default localhost); every test gets
its own exchanges and streams (a ``t<uuid>`` prefix) and deletes them afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from phoenix import broker
from phoenix.config import PROJECT_ROOT, Settings

SHARED = PROJECT_ROOT.parent / "shared" / "data"
NF_DIR = SHARED / "nf"
PCAP_DIR = SHARED / "pcaps"
REPLAY_CSV = NF_DIR / "NF-ToN-IoT-v2-replay-10k.csv"


def settings_env(s: Settings) -> dict[str, str]:
    return {**os.environ, **s.to_env(), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def broker_settings(tmp_path: Path):
    base = Settings.from_env()
    try:
        broker.connect(base).close()
    except broker.CONNECTION_ERRORS as exc:
        pytest.fail(f"RabbitMQ not reachable at {base.safe_url}: {exc} (start it: rabbitmq-server -detached)")
    tag = f"t{uuid.uuid4().hex[:10]}"
    s = replace(
        base,
        requests_exchange=f"{tag}.requests", requests_stream_prefix=f"{tag}.requests", partitions=2,
        alerts_exchange=f"{tag}.alerts", verdicts_stream=f"{tag}.verdicts",
        deadletter_exchange=f"{tag}.deadletter", deadletter_queue=f"{tag}.deadletter",
        archive_dir=str(tmp_path / "archive"),
        stream_max_bytes=200_000_000,
    )
    yield s
    try:
        broker.delete_topology(s)
    except broker.CONNECTION_ERRORS:
        time.sleep(3)  # a test may have just restarted the broker
        broker.delete_topology(s)


class Dataflow:
    """``python -m bytewax.run flows.classify`` as a child process (optionally one of several)."""

    def __init__(self, settings: Settings, log_path: Path, *, recovery: Path | None = None,
                 process: tuple[int, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "bytewax.run", "flows.classify"]
        if recovery is not None:
            cmd += ["-r", str(recovery), "-s", "1", "-b", "30"]
        if process is not None:
            cmd += ["-i", str(process[0]), "-a", process[1]]
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=settings_env(settings),
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_dataflow(tmp_path: Path):
    started: list[Dataflow] = []

    def start(settings: Settings, **kw) -> Dataflow:
        name = f"dataflow-{len(started)}.log"
        df = Dataflow(settings, tmp_path / name, **kw)
        started.append(df)
        return df

    yield start
    for df in started:
        df.stop()


def drain_deadletters(settings: Settings) -> list[dict]:
    import json

    conn = broker.connect(settings)
    try:
        ch = conn.channel()
        out = []
        while True:
            method, _props, body = ch.basic_get(settings.deadletter_queue, auto_ack=True)
            if method is None:
                return out
            out.append(json.loads(body))
    finally:
        conn.close()
