"""Live capture agent for an IoT gateway: sniff an interface, publish packet batches.

scapy opens the AF_PACKET socket and compiles/attaches the BPF filter; frames are then read
raw from that socket and decoded by :mod:`capture.pcapio` in batches (scapy's per-packet
dissection would cap the agent near 5k packets/s).

A batch is published when it holds ``batch`` packets or its first packet waited
``max_wait_s``. Publishing runs on its own thread behind a bounded queue: if the broker is slow
or reconnecting, whole batches are dropped and counted (``agent_drops``) instead of stalling
the socket, where the kernel would drop silently. Kernel drops are read from the socket's
PACKET_STATISTICS. On loopback each frame is seen twice (outgoing and incoming); like libpcap,
the outgoing copy is skipped there.
"""

from __future__ import annotations

import queue
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from capture.pcapio import LT_ETHERNET, DecodeStats, decode_raw_frames
from phoenix import schema

SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4


@dataclass
class CaptureStats:
    frames: int = 0
    packets: int = 0          # decoded IP packets published or queued
    batches: int = 0
    published_batches: int = 0
    kernel_packets: int = 0
    kernel_drops: int = 0
    agent_drops: int = 0      # packets in batches dropped because the publish queue was full
    decode: DecodeStats = field(default_factory=DecodeStats)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "decode"}
        d["decode"] = {k: v for k, v in self.decode.as_dict().items() if v}
        return d


def _kernel_stats(sock: socket.socket) -> tuple[int, int]:
    """(packets, drops) since the last call; Linux resets the counters on read."""
    try:
        raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        return struct.unpack("II", raw)
    except OSError:
        return 0, 0


def capture(iface: str, *, bpf: str | None = None, batch: int = 1024, max_wait_s: float = 0.05,
            duration_s: float | None = None, max_packets: int | None = None, device: str | None = None,
            publish: Callable[[str, bytes, str], None] | None = None, queue_batches: int = 64,
            stop: threading.Event | None = None, report_s: float = 5.0,
            ready: threading.Event | None = None) -> CaptureStats:
    """Capture until ``duration_s``, ``max_packets`` or ``stop``; ``publish(key, body, type)``
    sends one request (None: decode and count only). ``ready`` is set once the socket listens."""
    import logging

    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)  # "unable to guess type" on lo is noise
    from scapy.arch.linux import L2ListenSocket

    dev_id = device or f"{socket.gethostname()}:{iface}"
    sock = L2ListenSocket(iface=iface, filter=bpf)
    ins = sock.ins
    try:  # bursts outrun a 64 KiB default buffer; the kernel may clamp this to rmem_max
        ins.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    except OSError:
        pass
    ins.setblocking(False)
    loopback = iface == "lo" or iface.startswith("lo:")
    if ready is not None:
        ready.set()
    st = CaptureStats()
    q: queue.Queue = queue.Queue(maxsize=queue_batches)
    done = threading.Event()

    def sender() -> None:
        while not (done.is_set() and q.empty()):
            try:
                body = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if publish is not None:
                publish(dev_id, body, schema.ARROW_CONTENT_TYPE)
            st.published_batches += 1

    th = threading.Thread(target=sender, name="capture-publisher", daemon=True)
    th.start()
    frames: list[bytes] = []
    stamps: list[int] = []
    seq = 0
    first_at = 0.0
    t_end = time.monotonic() + duration_s if duration_s else None
    last_report = time.monotonic()
    stop = stop or threading.Event()

    def flush() -> None:
        nonlocal seq, frames, stamps
        if not frames:
            return
        pk = decode_raw_frames(frames, stamps, LT_ETHERNET, st.decode)
        frames, stamps = [], []
        if not len(pk):
            return
        body = schema.encode_request(pk.to_table(), kind=schema.KIND_PACKETS, device_id=dev_id, seq=seq,
                                     send_ts_ns=time.time_ns())
        seq += 1
        st.batches += 1
        st.packets += len(pk)
        try:
            q.put_nowait(body)
        except queue.Full:
            st.agent_drops += len(pk)

    try:
        while not stop.is_set():
            now = time.monotonic()
            if t_end is not None and now >= t_end:
                break
            if max_packets is not None and st.frames >= max_packets:
                break
            wait = max_wait_s if not frames else max(0.0, first_at + max_wait_s - now)
            r, _, _ = select.select([ins], [], [], min(wait, 0.2))
            if r:
                for _ in range(batch):
                    try:
                        data, addr = ins.recvfrom(65535)
                    except BlockingIOError:
                        break
                    if loopback and addr[2] == PACKET_OUTGOING:
                        continue
                    if not frames:
                        first_at = time.monotonic()
                    frames.append(data)
                    stamps.append(time.time_ns())
                    st.frames += 1
                    if len(frames) >= batch:
                        flush()
            if frames and time.monotonic() - first_at >= max_wait_s:
                flush()
            if time.monotonic() - last_report >= report_s:
                kp, kd = _kernel_stats(ins)
                st.kernel_packets += kp
                st.kernel_drops += kd
                last_report = time.monotonic()
                print(f"capture {iface}: {st.frames:,} frames, {st.packets:,} IP packets, kernel drops "
                      f"{st.kernel_drops:,}, agent drops {st.agent_drops:,}", file=sys.stderr, flush=True)
        flush()
    finally:
        kp, kd = _kernel_stats(ins)
        st.kernel_packets += kp
        st.kernel_drops += kd
        done.set()
        th.join(timeout=30)
        sock.close()
    return st
