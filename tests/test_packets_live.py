"""Live capture agent on loopback: only sends to 127.0.0.1; needs CAP_NET_RAW (root in CI)."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from capture.live import capture
from capture.pcapio import PacketBatch, addr_to_str
from phoenix.schema import KIND_PACKETS, decode_request

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs CAP_NET_RAW")


def test_capture_on_loopback_publishes_decoded_batches():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    bodies: list[bytes] = []
    listening = threading.Event()

    def send() -> None:
        assert listening.wait(30)  # the capture socket is open: nothing sent before it is lost
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(40):
            tx.sendto(b"p" * i, ("127.0.0.1", port))
        tx.close()

    t = threading.Thread(target=send)
    t.start()
    st = capture("lo", bpf=f"udp and dst port {port}", batch=16, max_wait_s=0.05, duration_s=1.5,
                 device="lo-test", publish=lambda key, body, ct: bodies.append(body), ready=listening)
    t.join()
    rx.close()
    assert st.frames == 40 and st.packets == 40, st.as_dict()  # loopback's outgoing copies skipped
    assert st.agent_drops == 0 and st.kernel_drops == 0
    reqs = [decode_request(b) for b in bodies]
    assert all(r.kind == KIND_PACKETS and r.device_id == "lo-test" for r in reqs)
    assert [r.seq for r in reqs] == list(range(len(reqs)))
    pk = PacketBatch.concat([PacketBatch.from_table(r.table) for r in reqs])
    assert set(pk.dst_port.tolist()) == {port} and sorted(pk.payload_len.tolist()) == list(range(40))
    assert {addr_to_str(a.tobytes()) for a in pk.src} == {"127.0.0.1"}
    assert (pk.ts_ns > 0).all()
