"""Reading verdicts back: a private queue on the alerts exchange, drained into tables.

Used by ``phoenix demo``, the benchmark and the tests; the dashboard has its own consumer.
"""

from __future__ import annotations

import time
import uuid

import pyarrow as pa

from phoenix import broker, schema
from phoenix.config import Settings


class VerdictCollector:
    """Binds an exclusive queue to ``verdicts.#`` (and optionally ``alert.#``) before traffic starts."""

    def __init__(self, settings: Settings, *, alerts: bool = False) -> None:
        self.settings = settings
        self.conn = broker.connect(settings)
        self.ch = self.conn.channel()
        broker.declare_outputs(self.ch, settings)
        self.queue = f"phoenix.collector.{uuid.uuid4().hex[:8]}"
        self.ch.queue_declare(self.queue, exclusive=True, auto_delete=True)
        self.ch.queue_bind(self.queue, settings.alerts_exchange, routing_key="verdicts.#")
        if alerts:
            self.ch.queue_bind(self.queue, settings.alerts_exchange, routing_key="alert.#")
        self.ch.basic_qos(prefetch_count=500)
        self.tables: list[pa.Table] = []
        self.alert_lines: list[bytes] = []
        self.alert_keys: list[str] = []
        self.received_ns: list[int] = []
        self.rows = 0
        self.ch.basic_consume(self.queue, self._on_message, auto_ack=True)

    def _on_message(self, ch, method, props, body: bytes) -> None:
        if props.content_type == schema.ARROW_CONTENT_TYPE:
            table = schema.decode_table(body)
            self.tables.append(table)
            self.received_ns.append(time.time_ns())
            self.rows += table.num_rows
        else:
            self.alert_keys.append(method.routing_key)
            self.alert_lines.extend(line for line in body.splitlines() if line)

    def poll(self, seconds: float = 0.0) -> None:
        self.conn.process_data_events(time_limit=seconds)

    def wait_for(self, rows: int, timeout: float, *, key=None, alive=None) -> bool:
        """Drain until ``rows`` verdicts (or ``key(self)`` of them) arrived, ``timeout`` passed,
        or ``alive()`` says the producer died."""
        deadline = time.monotonic() + timeout
        count = key or (lambda c: c.rows)
        while count(self) < rows and time.monotonic() < deadline and (alive is None or alive()):
            self.poll(0.05)
        return count(self) >= rows

    def table(self) -> pa.Table:
        return pa.concat_tables(self.tables) if self.tables else schema.VERDICT_SCHEMA.empty_table()

    def distinct_ids(self) -> int:
        return len(set(self.table().column("verdict_id").to_pylist()))

    def close(self) -> None:
        try:
            self.conn.close()
        except broker.CONNECTION_ERRORS:
            pass


def read_verdict_stream(settings: Settings, *, expect_ids: set[str], timeout: float) -> pa.Table:
    """Read the durable verdicts stream from its start until every id in ``expect_ids`` was seen.

    Survives broker restarts by reconnecting; used to prove that nothing was lost.
    """
    seen: set[str] = set()
    tables: list[pa.Table] = []
    deadline = time.monotonic() + timeout
    next_offset: int | str = "first"

    while time.monotonic() < deadline and not expect_ids <= seen:
        try:
            conn = broker.connect(settings)
            ch = conn.channel()
            ch.basic_qos(prefetch_count=1000)
            for method, props, body in ch.consume(settings.verdicts_stream, inactivity_timeout=1.0,
                                                  arguments={"x-stream-offset": next_offset}):
                if method is None:
                    if expect_ids <= seen or time.monotonic() > deadline:
                        break
                    continue
                offset = (props.headers or {}).get("x-stream-offset", -1)
                ch.basic_ack(method.delivery_tag)
                if isinstance(next_offset, int) and offset < next_offset:
                    continue
                next_offset = offset + 1
                table = schema.decode_table(body)
                tables.append(table)
                seen.update(table.column("verdict_id").to_pylist())
            conn.close()
        except broker.CONNECTION_ERRORS:
            time.sleep(0.5)
    return pa.concat_tables(tables) if tables else schema.VERDICT_SCHEMA.empty_table()
