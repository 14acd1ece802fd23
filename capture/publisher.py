"""Device-side publishing: a request goes to its device's partition stream, confirmed."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from phoenix import broker
from phoenix.config import Settings


class RequestPublisher:
    """Publishes request messages; returns once the broker has confirmed each one.

    The partition is chosen from a stable key (the device id), so one device's messages stay
    in order on one stream.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pub = broker.ConfirmedPublisher(settings, declare=(broker.declare_requests,), what="device")
        self.messages = 0
        self.bytes = 0

    def publish_request(self, partition_key: str, body: bytes, content_type: str) -> None:
        p = broker.partition_of(partition_key, self.settings.partitions)
        self._pub.publish(self.settings.requests_exchange, str(p), body, content_type=content_type)
        self.messages += 1
        self.bytes += len(body)

    @property
    def reconnects(self) -> int:
        return self._pub.reconnects

    def close(self) -> None:
        self._pub.close()


@dataclass
class PublishSummary:
    units: int  # records or packets
    messages: int
    seconds: float
    reconnects: int

    @property
    def per_s(self) -> float | None:
        return round(self.units / self.seconds, 1) if self.seconds else None


def publish_messages(settings: Settings, stream: Iterable, *, device_id: Callable[[int], str],
                     size: Callable[[object], int], content_type: str, unit: str,
                     progress: bool = True) -> PublishSummary:
    """Publish simulated devices' messages as ``stream`` yields them, confirmed, with a progress
    line on stderr every second. Pacing is the stream's job: it yields each message when due."""
    pub = RequestPublisher(settings)
    start = last = time.monotonic()
    sent = 0
    try:
        for m in stream:
            pub.publish_request(device_id(m.device), m.body, content_type)
            sent += size(m)
            now = time.monotonic()
            if progress and now - last >= 1.0:
                print(f"replay: {sent:,} {unit}, {sent / (now - start):,.0f} {unit}/s, {pub.messages:,} messages",
                      file=sys.stderr, flush=True)
                last = now
    finally:
        pub.close()
    return PublishSummary(sent, pub.messages, round(time.monotonic() - start, 3), pub.reconnects)
