"""One AMQP consumer per server process, feeding the shared :class:`~dashboards.state.LiveState`.

``panel serve`` re-runs ``app.py`` for every browser session, but Python caches this module, so
:func:`shared` hands every session the same thread and the same aggregates: the broker sees one
queue however many people watch, and a new tab shows the totals immediately.

The queue is exclusive, auto-delete and capped (``x-max-length`` / ``x-max-length-bytes``,
drop-head): if the dashboard ever falls behind, the broker discards the oldest batches instead
of growing, and the live view stays current. That is the right trade for a live view; complete
history lives in the Parquet archive (the History page). Messages published while the
dashboard is disconnected are not seen by it.
"""

from __future__ import annotations

import logging
import threading
import time

import pika
import pika.exceptions
import pyarrow as pa

from dashboards.state import LiveState
from phoenix.config import Settings, redact_url
from phoenix.schema import ARROW_CONTENT_TYPE, decode_table

log = logging.getLogger("phoenix.dashboard")
# pika logs every failed reconnect attempt with a traceback at ERROR; our one warning line per
# attempt says the same, so keep the server log readable while the broker is away.
logging.getLogger("pika").setLevel(logging.CRITICAL)

BINDINGS = ("verdicts.#", "alert.#")
_NEEDED = {"malicious", "latency_ms", "classify_us", "worker", "src_addr", "dst_addr", "device_id",
           "verdict_ts_ns", "model_version"}


class SharedConsumer(threading.Thread):
    """Background thread: connect, consume, fold into ``state``; reconnect forever on failure."""

    def __init__(self, settings: Settings, state: LiveState, *, max_messages: int = 500,
                 max_bytes: int = 64 * 1024 * 1024, heartbeat: int = 5,
                 retry_delay: float = 1.0, max_retry_delay: float = 5.0) -> None:
        super().__init__(name="phoenix-dashboard-consumer", daemon=True)
        self.settings = settings
        self.state = state
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.heartbeat = heartbeat
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._stop_event = threading.Event()
        self.connections = 0

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        self.join(timeout)

    def run(self) -> None:
        delay = self.retry_delay
        while not self._stop_event.is_set():
            try:
                self._consume()
                delay = self.retry_delay
            except Exception as exc:  # noqa: BLE001 - any failure means "reconnect", never "die"
                detail = redact_url(_describe(exc))[:200]
                self.state.set_status("disconnected", detail)
                log.warning("dashboard consumer: %s; retrying in %.1fs", detail, delay)
                self._stop_event.wait(delay)
                delay = min(delay * 2, self.max_retry_delay)
        self.state.set_status("stopped")

    def _consume(self) -> None:
        params = pika.URLParameters(self.settings.amqp_url)
        params.heartbeat = self.heartbeat
        params.socket_timeout = 3
        params.blocked_connection_timeout = 30
        params.connection_attempts = 1
        conn = pika.BlockingConnection(params)
        try:
            ch = conn.channel()
            self._declare_exchange(conn, ch)
            ch = conn.channel() if ch.is_closed else ch
            q = ch.queue_declare("", exclusive=True, auto_delete=True, arguments={
                "x-max-length": self.max_messages, "x-max-length-bytes": self.max_bytes,
                "x-overflow": "drop-head"}).method.queue
            for key in BINDINGS:
                ch.queue_bind(q, self.settings.alerts_exchange, routing_key=key)
            # auto_ack: the queue is private and lossy by design (see module doc); acks would only cost.
            ch.basic_consume(q, self._on_message, auto_ack=True)
            self.connections += 1
            self.state.set_status("connected")
            while not self._stop_event.is_set():
                conn.process_data_events(time_limit=0.5)
        finally:
            try:
                if conn.is_open:
                    conn.close()
            except Exception:  # noqa: BLE001 - closing a dead connection may raise anything
                pass

    def _declare_exchange(self, conn: pika.BlockingConnection, ch: pika.adapters.blocking_connection.BlockingChannel) -> None:
        """Declare idempotently; if someone declared it differently, use theirs as it is."""
        try:
            ch.exchange_declare(self.settings.alerts_exchange, exchange_type="topic", durable=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 406:
                raise
            conn.channel().exchange_declare(self.settings.alerts_exchange, passive=True)

    def _on_message(self, ch: object, method: pika.spec.Basic.Deliver, props: pika.BasicProperties,
                    body: bytes) -> None:
        key = method.routing_key or ""
        try:
            if key.startswith("alert."):
                self.state.ingest_alerts(body)
            elif key.startswith("verdicts.") or props.content_type == ARROW_CONTENT_TYPE:
                table = decode_table(body)
                missing = _NEEDED - set(table.column_names)
                if missing:
                    raise ValueError(f"verdict batch lacks {sorted(missing)}")
                self.state.ingest_verdicts(table)
        except (pa.ArrowException, ValueError, KeyError, TypeError, OSError) as exc:
            # A malformed message must not take the live view down: count it and move on.
            log.warning("dashboard: skipped a bad message on %s: %s", key, exc)
            self.state.count_bad()


def _describe(exc: BaseException) -> str:
    """A short reason for the page; pika's connection errors often have an empty str()."""
    text = str(exc).strip()
    if not text and exc.args:
        text = str(exc.args[0]).strip()
    if isinstance(exc, pika.exceptions.AMQPConnectionError) and not text:
        text = "cannot connect to the broker"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_shared: SharedConsumer | None = None
_shared_lock = threading.Lock()


def shared(settings: Settings | None = None) -> SharedConsumer:
    """The process-wide consumer, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.is_alive():
            settings = settings or Settings.from_env()
            state = _shared.state if _shared is not None else LiveState(broker=settings.safe_url)
            _shared = SharedConsumer(settings, state)
            _shared.start()
        return _shared


def wait_connected(consumer: SharedConsumer, timeout: float = 10.0) -> bool:
    """Test helper: block until the consumer reports ``connected``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if consumer.state.status == "connected":
            return True
        time.sleep(0.05)
    return False
