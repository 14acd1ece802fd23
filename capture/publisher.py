"""Device-side publishing: a request goes to its device's partition stream, confirmed."""

from __future__ import annotations

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
