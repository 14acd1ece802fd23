"""Synthetic captures: a labelled IoT capture for demos, and a large capture for benchmarks.

Packets are built with ``struct`` (no scapy): the benchmark file has millions of packets and is
generated with numpy in seconds. Checksums are computed for the IoT capture (it is meant to be
opened in Wireshark), not for the benchmark file (nothing reads them).
"""

from __future__ import annotations

import csv
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262_144, 1)  # µs, Ethernet
SRC_MAC = bytes.fromhex("02005e000001")
DST_MAC = bytes.fromhex("02005e000002")


# --------------------------------------------------------------------------- benchmark capture

def write_bench_pcap(path: str | Path, packets: int = 1_000_000, packets_per_flow: int = 10,
                     snaplen: int = 64, seed: int = 7, start_s: float = 1.7e9,
                     flows_per_s: float = 20_000.0) -> dict:
    """A large Ethernet/IPv4 TCP capture: flows of ``packets_per_flow`` packets (SYN, SYN-ACK,
    data both ways, FIN-ACK both ways) interleaved in time, captured with a ``snaplen`` so every
    record has the same size (the IP total length still tells the real size).

    ``packets_per_flow=1`` makes a million-distinct-flow file (memory test). Returns a summary.
    """
    if snaplen < 54:
        raise ValueError("snaplen must cover the Ethernet + IPv4 + TCP headers (54 bytes)")
    rng = np.random.default_rng(seed)
    k = max(1, packets_per_flow)
    nflows = max(1, packets // k)
    n = nflows * k
    flow = np.repeat(np.arange(nflows), k)
    j = np.tile(np.arange(k), nflows)
    # flow start times spread at flows_per_s; packets 1 ms apart inside a flow
    start_us = (np.arange(nflows) * (1e6 / flows_per_s)).astype(np.int64)
    t_us = start_us[flow] + j * 1000 + (int(start_s) * 1_000_000)
    order = np.argsort(t_us, kind="stable")
    flow, j, t_us = flow[order], j[order], t_us[order]
    client_ip = (0x0A000000 + (flow % 60_000) + 1).astype(np.uint32)          # 10.0.x.y
    server_ip = (0xC0A80000 + (flow // 60_000) % 250 + 1).astype(np.uint32)  # 192.168.0.x
    cport = (1024 + (flow * 7919) % 60_000).astype(np.uint16)
    sport_srv = np.where(flow % 3 == 0, 443, np.where(flow % 3 == 1, 80, 1883)).astype(np.uint16)
    to_server = (j % 2 == 0)
    if k == 1:
        flags = np.full(n, 0x02, np.uint8)
    else:
        flags = np.where(j == 0, 0x02, np.where(j == 1, 0x12, np.where(j >= k - 2, 0x11, 0x18))).astype(np.uint8)
    payload = np.where((flags == 0x18), rng.integers(20, 1400, n), 0)
    ip_len = (40 + payload).astype(np.uint16)
    src = np.where(to_server, client_ip, server_ip)
    dst = np.where(to_server, server_ip, client_ip)
    sp = np.where(to_server, cport, sport_srv)
    dp = np.where(to_server, sport_srv, cport)
    seq = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    frame_len = 14 + ip_len.astype(np.int64)
    cap = np.minimum(frame_len, snaplen)
    rec_size = 16 + snaplen
    buf = np.zeros((n, rec_size), np.uint8)
    hdr = np.zeros((n, 4), "<u4")
    hdr[:, 0] = t_us // 1_000_000
    hdr[:, 1] = t_us % 1_000_000
    hdr[:, 2] = cap
    hdr[:, 3] = frame_len
    buf[:, 0:16] = hdr.view(np.uint8).reshape(n, 16)
    eth = np.frombuffer(DST_MAC + SRC_MAC + b"\x08\x00", np.uint8)
    buf[:, 16:30] = eth
    ip = buf[:, 30:50]
    ip[:, 0] = 0x45
    ip[:, 2:4] = ip_len.astype(">u2").view(np.uint8).reshape(n, 2)
    ip[:, 8] = np.where(to_server, 64, 57)
    ip[:, 9] = 6
    ip[:, 12:16] = src.astype(">u4").view(np.uint8).reshape(n, 4)
    ip[:, 16:20] = dst.astype(">u4").view(np.uint8).reshape(n, 4)
    tcp = buf[:, 50:70]
    tcp[:, 0:2] = sp.astype(">u2").view(np.uint8).reshape(n, 2)
    tcp[:, 2:4] = dp.astype(">u2").view(np.uint8).reshape(n, 2)
    tcp[:, 4:8] = seq.astype(">u4").view(np.uint8).reshape(n, 4)
    tcp[:, 12] = 0x50
    tcp[:, 13] = flags
    tcp[:, 14:16] = np.full(n, 29200, ">u2").view(np.uint8).reshape(n, 2)
    # records shorter than snaplen (bare SYN/ACK frames) must not carry padding bytes
    path = Path(path)
    with open(path, "wb") as f:
        f.write(PCAP_HEADER)
        if (cap == snaplen).all():
            f.write(buf.tobytes())
        else:
            keep = np.arange(rec_size)[None, :] < (16 + cap)[:, None]
            f.write(buf[keep].tobytes())
    return {"path": str(path), "packets": int(n), "flows": int(nflows), "bytes": path.stat().st_size}


# --------------------------------------------------------------------------- packet builder

def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_packet(src: str, dst: str, proto: int, l4: bytes, ttl: int = 64, ident: int = 0) -> bytes:
    s = bytes(int(x) for x in src.split("."))
    d = bytes(int(x) for x in dst.split("."))
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, 0x4000, ttl, proto, 0, s, d)
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    pseudo = s + d + struct.pack("!BBH", 0, proto, len(l4))
    if proto in (6, 17):
        off = 16 if proto == 6 else 6
        c = _csum(pseudo + l4) or 0xFFFF
        l4 = l4[:off] + struct.pack("!H", c) + l4[off + 2:]
    elif proto == 1:
        l4 = l4[:2] + struct.pack("!H", _csum(l4)) + l4[4:]
    return hdr + l4


def tcp_segment(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"",
                window: int = 29200) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags,
                       window, 0, 0) + payload


def udp_datagram(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ether(ip: bytes) -> bytes:
    return DST_MAC + SRC_MAC + b"\x08\x00" + ip


class PcapWriter:
    """Minimal Ethernet pcap writer (µs timestamps)."""

    def __init__(self, path: str | Path) -> None:
        self._f = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._f.write(PCAP_HEADER)
        self.count = 0

    def write(self, ts: float, frame: bytes) -> None:
        sec = int(ts)
        usec = int(round((ts - sec) * 1e6))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        self._f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
        self.count += 1

    def close(self) -> None:
        self._f.close()


# --------------------------------------------------------------------------- labelled IoT capture

def dns_query(qid: int, name: str, qtype: int = 1) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def dns_answer(qid: int, name: str, ip: str, ttl: int = 300, qtype: int = 1) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    ans = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + bytes(int(x) for x in ip.split("."))
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + q + struct.pack("!HH", qtype, 1) + ans


@dataclass
class _Event:
    ts: float
    frame: bytes


class _Session:
    """Collects frames of one labelled flow and writes its label row."""

    def __init__(self, out: list[_Event], labels: list[dict], label: str, attack: str,
                 src: str, sport: int, dst: str, dport: int, proto: int) -> None:
        self.out = out
        self.ttl_c, self.ttl_s = 64, 64
        self.row = {"src_addr": src, "src_port": sport, "dst_addr": dst, "dst_port": dport,
                    "protocol": proto, "label": label, "attack": attack}
        labels.append(self.row)
        self.src, self.sport, self.dst, self.dport, self.proto = src, sport, dst, dport, proto
        self.cseq = random.getrandbits(32)
        self.sseq = random.getrandbits(32)

    def udp(self, ts: float, payload: bytes, to_server: bool = True) -> None:
        if to_server:
            ip = ipv4_packet(self.src, self.dst, 17, udp_datagram(self.sport, self.dport, payload), self.ttl_c)
        else:
            ip = ipv4_packet(self.dst, self.src, 17, udp_datagram(self.dport, self.sport, payload), self.ttl_s)
        self.out.append(_Event(ts, ether(ip)))

    def tcp(self, ts: float, flags: int, payload: bytes = b"", to_server: bool = True) -> None:
        if to_server:
            seg = tcp_segment(self.sport, self.dport, self.cseq, self.sseq, flags, payload, 64240)
            ip = ipv4_packet(self.src, self.dst, 6, seg, self.ttl_c)
            self.cseq += len(payload) + (1 if flags & 0x03 else 0)
        else:
            seg = tcp_segment(self.dport, self.sport, self.sseq, self.cseq, flags, payload, 65160)
            ip = ipv4_packet(self.dst, self.src, 6, seg, self.ttl_s)
            self.sseq += len(payload) + (1 if flags & 0x03 else 0)
        self.out.append(_Event(ts, ether(ip)))

    def tcp_conversation(self, ts: float, exchanges: list[tuple[bytes, bytes]], rtt: float = 0.02,
                         think: float = 0.1) -> float:
        """Handshake, request/response pairs, FIN teardown; returns the end time."""
        self.tcp(ts, 0x02)
        self.tcp(ts + rtt, 0x12, to_server=False)
        self.tcp(ts + rtt * 1.5, 0x10)
        t = ts + rtt * 2
        for req, resp in exchanges:
            if req:
                self.tcp(t, 0x18, req)
            if resp:
                self.tcp(t + rtt, 0x18, resp, to_server=False)
            t += rtt + think
        self.tcp(t, 0x11)
        self.tcp(t + rtt, 0x11, to_server=False)
        self.tcp(t + rtt * 1.5, 0x10)
        return t + rtt * 1.5


def write_iot_capture(path: str | Path, duration_s: float = 60.0, devices: int = 12, seed: int = 1,
                      attacks: bool = True, start_s: float = 1.75e9) -> dict:
    """Write a labelled synthetic IoT capture and ``<path>.labels.csv`` (one row per flow:
    5-tuple as the client sent it, ``label`` benign/malicious, ``attack`` type).

    Benign devices (10.10.0.x) talk MQTT to a broker, CoAP to a hub, DNS to a resolver, NTP,
    HTTP firmware checks and TLS to a cloud endpoint; attackers (172.16.66.x) run a SYN scan, a
    SYN flood, a telnet brute force and a DNS tunnel in the second half.
    """
    random.seed(seed)
    ev: list[_Event] = []
    labels: list[dict] = []
    t0 = start_s
    broker, hub, resolver, ntp, cloud, web = "10.10.0.2", "10.10.0.3", "10.10.0.1", "162.159.200.1", \
        "52.28.14.9", "93.184.216.34"
    for d in range(devices):
        dev = f"10.10.0.{20 + d}"
        # MQTT: one long session with periodic PUBLISH, keepalive PINGREQ
        s = _Session(ev, labels, "benign", "Benign", dev, 40000 + d, broker, 1883, 6)
        connect = bytes.fromhex("101800044d5154540402003c000c") + f"sensor-{d:06d}".encode()[:12]
        pubs = [(bytes.fromhex("3012000a") + b"tele/temp" + b"{\"t\":21}"[:5], b"")
                for _ in range(int(duration_s // 10))]
        s.tcp_conversation(t0 + random.random(), [(connect, bytes.fromhex("20020000"))] + pubs, think=9.0)
        # DNS + HTTP firmware check + TLS telemetry, every ~20 s
        t = t0 + 1 + random.random() * 5
        while t < t0 + duration_s - 5:
            qid = random.getrandbits(16)
            q = _Session(ev, labels, "benign", "Benign", dev, random.randint(1025, 65000), resolver, 53, 17)
            q.udp(t, dns_query(qid, "api.vendor-iot.example"))
            q.udp(t + 0.01, dns_answer(qid, "api.vendor-iot.example", cloud, 300), to_server=False)
            if random.random() < 0.5:
                h = _Session(ev, labels, "benign", "Benign", dev, random.randint(1025, 65000), web, 80, 6)
                h.tcp_conversation(t + 0.05, [(b"GET /fw/latest.json HTTP/1.1\r\nHost: fw.example\r\n\r\n",
                                               b"HTTP/1.1 200 OK\r\nContent-Length: 120\r\n\r\n" + b"x" * 120)])
            else:
                tl = _Session(ev, labels, "benign", "Benign", dev, random.randint(1025, 65000), cloud, 443, 6)
                hello = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + bytes(random.getrandbits(8) for _ in range(190))
                tl.tcp_conversation(t + 0.05, [(hello, b"\x16\x03\x03" + bytes(1200)),
                                               (b"\x17\x03\x03" + bytes(300), b"\x17\x03\x03" + bytes(80))])
            t += 15 + random.random() * 10
        # CoAP observe to the hub and NTP once
        c = _Session(ev, labels, "benign", "Benign", dev, 5683, hub, 5683, 17)
        for i in range(int(duration_s // 5)):
            tc = t0 + i * 5 + random.random()
            c.udp(tc, bytes.fromhex("4401") + struct.pack("!H", i) + b"\xb5temp")
            c.udp(tc + 0.01 + random.random() * 0.01, bytes.fromhex("6445") + struct.pack("!H", i) + b"\xff21.5",
                  to_server=False)
        n = _Session(ev, labels, "benign", "Benign", dev, 123, ntp, 123, 17)
        tn = t0 + 2 + random.random()
        n.udp(tn, b"\x23" + bytes(47))
        n.udp(tn + 0.03 + random.random() * 0.01, b"\x24\x02" + bytes(46), to_server=False)
    if attacks:
        half = t0 + duration_s / 2
        target = "10.10.0.21"
        # SYN scan: one SYN per port, RST-ACK back from closed ports
        for i, port in enumerate(range(1, 1025)):
            s = _Session(ev, labels, "malicious", "scanning", "172.16.66.6", 55555, target, port, 6)
            s.ttl_c = 49
            s.tcp(half + i * 0.002, 0x02)
            if port not in (23, 80):
                s.tcp(half + i * 0.002 + 0.0005, 0x14, to_server=False)
        # SYN flood on the broker from spoofed sources, no answers
        for i in range(3000):
            src = f"198.51.{random.randint(0, 255)}.{random.randint(1, 254)}"
            s = _Session(ev, labels, "malicious", "DoS", src, random.randint(1024, 65535), broker, 1883, 6)
            s.ttl_c = random.randint(40, 250)
            s.tcp(half + 5 + i * 0.0005, 0x02)
        # telnet brute force: short login attempts
        for i in range(60):
            s = _Session(ev, labels, "malicious", "password", "172.16.66.7", 41000 + i, target, 23, 6)
            s.ttl_c = 52
            s.tcp_conversation(half + 8 + i * 0.4, [(b"", b"\xff\xfd\x18\xff\xfd\x20login: "),
                                                    (b"root\r\n", b"Password: "),
                                                    (f"admin{i}\r\n".encode(), b"\r\nLogin incorrect\r\n")],
                               rtt=0.005, think=0.05)
        # DNS tunnel: long random labels, TXT queries, one flow
        s = _Session(ev, labels, "malicious", "dns tunnel", "10.10.0.23", 53111, resolver, 53, 17)
        for i in range(400):
            qid = random.getrandbits(16)
            name = "".join(random.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(60)) + ".t.evil.example"
            s.udp(half + 3 + i * 0.05, dns_query(qid, name, 16))
            s.udp(half + 3 + i * 0.05 + 0.02, dns_answer(qid, name, "10.0.0.1", 0, 16), to_server=False)
    ev.sort(key=lambda e: e.ts)
    w = PcapWriter(path)
    for e in ev:
        w.write(e.ts, e.frame)
    w.close()
    lab_path = Path(str(path) + ".labels.csv")
    with open(lab_path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(labels[0]))
        wr.writeheader()
        wr.writerows(labels)
    mal = sum(1 for r in labels if r["label"] == "malicious")
    return {"path": str(path), "labels": str(lab_path), "packets": w.count, "flows": len(labels),
            "malicious_flows": mal}
