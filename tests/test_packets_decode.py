"""Decoder: file formats, link types, IP/L4 parsing, DNS/FTP fields, damaged input.

Every capture here is written byte by byte in the test, so each expected value is known.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from capture.pcapio import (
    CaptureError,
    PacketBatch,
    addr_to_str,
    decode_raw_frames,
    read_capture,
    str_to_addr,
)
from capture.synth import dns_answer, dns_query, ether, ipv4_packet, tcp_segment, udp_datagram

T0 = 1_700_000_000


def pcap_bytes(frames: list[tuple[int, bytes]], *, linktype: int = 1, nano: bool = False, big: bool = False,
               snaplen: int = 65535) -> bytes:
    e = ">" if big else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for ts_ns, fr in frames:
        sec, rem = divmod(ts_ns, 1_000_000_000)
        frac = rem if nano else rem // 1000
        cap = fr[:snaplen]
        out.append(struct.pack(e + "IIII", sec, frac, len(cap), len(fr)) + cap)
    return b"".join(out)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def tcp4(src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=80, flags=0x02, payload=b"", ttl=64, seq=1000,
         window=29200) -> bytes:
    return ipv4_packet(src, dst, 6, tcp_segment(sport, dport, seq, 0, flags, payload, window), ttl)


def ipv6_udp(src: str, dst: str, sport: int, dport: int, payload: bytes, ext: bytes = b"", first_nh: int = 17,
             hlim: int = 33) -> bytes:
    import ipaddress

    udp = udp_datagram(sport, dport, payload)
    body = ext + udp
    return struct.pack("!IHBB", 0x60000000, len(body), first_nh, hlim) + ipaddress.IPv6Address(src).packed \
        + ipaddress.IPv6Address(dst).packed + body


def test_pcap_micro_little_endian_ethernet_tcp(tmp_path):
    fr = ether(tcp4(flags=0x18, payload=b"x" * 100, window=1234, seq=7))
    p = write(tmp_path, "a.pcap", pcap_bytes([(T0 * 10**9 + 123_456_000, fr)]))
    b, st = read_capture(p)
    assert st.packets == 1 and not st.errors
    assert b.ts_ns[0] == T0 * 10**9 + 123_456_000
    assert addr_to_str(b.src[0].tobytes()) == "10.0.0.1" and addr_to_str(b.dst[0].tobytes()) == "10.0.0.2"
    assert (b.src_port[0], b.dst_port[0], b.protocol[0]) == (40000, 80, 6)
    assert b.ip_len[0] == 20 + 20 + 100
    assert b.payload_len[0] == 100 and b.tcp_flags[0] == 0x18 and b.tcp_window[0] == 1234 and b.tcp_seq[0] == 7
    assert b.ttl[0] == 64


def test_pcap_nanosecond_big_endian(tmp_path):
    fr = ether(tcp4())
    p = write(tmp_path, "b.pcap", pcap_bytes([(T0 * 10**9 + 123_456_789, fr)], nano=True, big=True))
    b, st = read_capture(p)
    assert b.ts_ns.tolist() == [T0 * 10**9 + 123_456_789]


def test_vlan_qinq_mpls_ethernet(tmp_path):
    ip = tcp4(sport=1111, dport=2222)
    mac = bytes(12)
    qinq = mac + b"\x88\xa8\x00\x0a" + b"\x81\x00\x00\x14" + b"\x08\x00" + ip
    mpls = mac + b"\x88\x47" + b"\x00\x01\x00\x40" + b"\x00\x02\x01\x40" + ip  # two labels, BoS on the 2nd
    dot1q = mac + b"\x81\x00\x00\x05\x08\x00" + ip
    p = write(tmp_path, "v.pcap", pcap_bytes([(T0 * 10**9, qinq), (T0 * 10**9 + 1, mpls), (T0 * 10**9 + 2, dot1q)]))
    b, st = read_capture(p)
    assert st.packets == 3
    assert b.src_port.tolist() == [1111] * 3 and b.dst_port.tolist() == [2222] * 3


def test_linux_sll_sll2_null_raw(tmp_path):
    ip = ipv4_packet("192.0.2.1", "192.0.2.2", 17, udp_datagram(5000, 6000, b"hi"))
    sll = b"\x00\x00\x00\x01\x00\x06" + bytes(8) + b"\x08\x00" + ip
    sll2 = b"\x08\x00\x00\x00" + bytes(16) + ip
    null_le = struct.pack("<I", 2) + ip
    null_v6 = struct.pack("<I", 30) + ipv6_udp("2001:db8::1", "2001:db8::2", 7, 8, b"")
    for lt, fr in ((113, sll), (276, sll2), (0, null_le), (101, ip), (228, ip)):
        b, st = read_capture(write(tmp_path, f"l{lt}.pcap", pcap_bytes([(T0 * 10**9, fr)], linktype=lt)))
        assert st.packets == 1, lt
        assert (b.src_port[0], b.dst_port[0], b.payload_len[0]) == (5000, 6000, 2), lt
    b, st = read_capture(write(tmp_path, "n6.pcap", pcap_bytes([(T0 * 10**9, null_v6)], linktype=0)))
    assert addr_to_str(b.src[0].tobytes()) == "2001:db8::1" and b.dst_port[0] == 8


def test_ipv4_options_and_icmp():
    # IHL 6: one 4-byte option (NOP NOP NOP EOL); ICMP echo request type 8 code 0
    icmp = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping"
    hdr = struct.pack("!BBHHHBBH4s4s", 0x46, 0, 24 + len(icmp), 0, 0, 55, 1, 0, bytes([10, 0, 0, 9]),
                      bytes([10, 0, 0, 10])) + b"\x01\x01\x01\x00"
    b = decode_raw_frames([ether(hdr + icmp)], [1], 1)
    assert b.protocol[0] == 1 and b.icmp_type[0] == 8 * 256 and b.ip_len[0] == 24 + len(icmp) and b.ttl[0] == 55


def test_ipv6_extension_headers_fragment_and_icmpv6():
    hop = bytes([60, 0]) + bytes(6)           # hop-by-hop → destination options
    dst_opts = bytes([44, 0]) + bytes(6)      # destination options → fragment
    frag = bytes([17, 0]) + struct.pack("!HI", 0x0001, 99)  # offset 0, M=1: first fragment, UDP next
    ip6 = ipv6_udp("2001:db8::a", "2001:db8::b", 53, 5353, b"", ext=hop + dst_opts + frag, first_nh=0)
    icmp6 = struct.pack("!BBH", 128, 0, 0) + b"abcd"
    import ipaddress

    ping6 = struct.pack("!IHBB", 0x60000000, len(icmp6), 58, 64) + ipaddress.IPv6Address("::1").packed * 2 + icmp6
    b = decode_raw_frames([ether6(ip6), ether6(ping6)], [1, 2], 1)
    assert b.protocol.tolist() == [17, 58]
    assert (b.src_port[0], b.dst_port[0]) == (53, 5353)
    assert b.ttl[0] == 33 and b.ip_len[0] == 40 + 24 + 8
    assert b.icmp_type[1] == 128 * 256


def ether6(ip: bytes) -> bytes:
    return bytes(12) + b"\x86\xdd" + ip


def test_ipv4_fragments_inherit_ports():
    # first fragment carries the UDP header; the second has offset 8 bytes and no L4 header
    udp = udp_datagram(1234, 4321, b"A" * 16)
    f1 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 16, 77, 0x2000, 64, 17, 0, b"\x0a\0\0\x01", b"\x0a\0\0\x02") + udp[:16]
    f2 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8, 77, 0x0002, 64, 17, 0, b"\x0a\0\0\x01", b"\x0a\0\0\x02") + udp[16:]
    from capture.pcapio import DecodeStats

    st = DecodeStats()
    b = decode_raw_frames([ether(f1), ether(f2)], [1, 2], 1, st)
    assert st.fragments == 2 and st.orphan_fragments == 0
    assert b.src_port.tolist() == [1234, 1234] and b.dst_port.tolist() == [4321, 4321]


def test_dns_fields_and_ftp_reply():
    q = ipv4_packet("10.0.0.5", "10.0.0.53", 17, udp_datagram(3333, 53, dns_query(0xBEEF, "a.example", 28)))
    a = ipv4_packet("10.0.0.53", "10.0.0.5", 17, udp_datagram(53, 3333, dns_answer(0xBEEF, "a.example", "1.2.3.4", 777, qtype=28)))
    ftp = tcp4(src="10.0.0.21", dst="10.0.0.5", sport=21, dport=50000, flags=0x18, payload=b"230 Login successful.\r\n")
    b = decode_raw_frames([ether(q), ether(a), ether(ftp)], [1, 2, 3], 1)
    assert b.dns_query_id.tolist()[:2] == [0xBEEF, 0xBEEF]
    assert b.dns_query_type.tolist()[:2] == [28, 28]
    assert b.dns_ttl_answer.tolist() == [0, 777, 0]
    assert b.ftp_ret_code.tolist() == [0, 0, 230]


def test_truncated_malformed_and_non_ip_are_counted(tmp_path):
    good = ether(tcp4())
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    bad_ihl = ether(b"\x43" + tcp4()[1:])       # IHL 3 (< 5): impossible
    cut = ether(tcp4())[:14 + 10]                # IP header cut by snaplen
    p = write(tmp_path, "m.pcap", pcap_bytes([(T0 * 10**9 + i, f) for i, f in enumerate([good, arp, bad_ihl, cut])]))
    b, st = read_capture(p)
    assert (st.records, st.packets, st.non_ip, st.malformed, st.truncated) == (4, 1, 1, 1, 1)


def test_corrupt_record_and_truncated_file_and_garbage(tmp_path):
    fr = ether(tcp4())
    data = pcap_bytes([(T0 * 10**9, fr), (T0 * 10**9 + 5, fr)])
    corrupt = data[:24 + 16 + len(fr)] + struct.pack("<IIII", T0, 0, 0x7FFF_FFFF, 60) + b"junk"
    b, st = read_capture(write(tmp_path, "c.pcap", corrupt))
    assert len(b) == 1 and "corrupt record header" in st.errors[0]
    b, st = read_capture(write(tmp_path, "t.pcap", data[:-7]))
    assert len(b) == 1 and "ends inside a record" in st.errors[0]
    with pytest.raises(CaptureError, match="unknown magic"):
        read_capture(write(tmp_path, "g.pcap", b"hello world, not a capture"))
    b, st = read_capture(write(tmp_path, "h.pcap", data[:10]))
    assert len(b) == 0 and "truncated pcap global header" in st.errors[0]


def pcapng_bytes() -> bytes:
    """Two interfaces: Ethernet in µs and raw IPv4 with if_tsresol = 9 (ns)."""
    def block(btype: int, body: bytes) -> bytes:
        body += bytes((-len(body)) % 4)
        ln = len(body) + 12
        return struct.pack("<II", btype, ln) + body + struct.pack("<I", ln)

    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb0 = block(1, struct.pack("<HHI", 1, 0, 65535) + struct.pack("<HH", 0, 0))
    idb1 = block(1, struct.pack("<HHI", 228, 0, 65535) + struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0))

    def epb(ifid: int, ts: int, fr: bytes) -> bytes:
        return block(6, struct.pack("<IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(fr), len(fr)) + fr)

    ip = tcp4(sport=9, dport=10)
    return shb + idb0 + idb1 + epb(0, T0 * 10**6 + 5, ether(ip)) + epb(1, T0 * 10**9 + 7, ip)


def test_pcapng_two_interfaces(tmp_path):
    b, st = read_capture(write(tmp_path, "x.pcapng", pcapng_bytes()))
    assert st.packets == 2 and not st.errors
    assert b.ts_ns.tolist() == [T0 * 10**9 + 5000, T0 * 10**9 + 7]
    assert b.src_port.tolist() == [9, 9]


def test_table_round_trip_and_addresses():
    b = decode_raw_frames([ether(tcp4(src="1.2.3.4", dst="5.6.7.8"))], [42], 1)
    t = b.to_table()
    back = PacketBatch.from_table(t)
    assert np.array_equal(back.src, b.src) and back.ts_ns.tolist() == [42]
    assert str_to_addr("1.2.3.4") == b.src[0].tobytes()
    assert addr_to_str(str_to_addr("2001:db8::1")) == "2001:db8::1"


def test_mutated_captures_never_crash(tmp_path):
    """Random byte damage anywhere in real captures: decode what is sound, never raise or hang."""
    from capture.pcapio import DecodeStats, iter_capture
    from flows.meter import FlowMeter
    from phoenix.config import PROJECT_ROOT

    pcaps = PROJECT_ROOT.parent / "shared" / "data" / "pcaps"
    rng = np.random.default_rng(5)
    sources = [pcaps / "robust_vlan_arkime_qinq_twovlan.pcap", pcaps / "robust_pcapng_zeek_multi_interface.pcapng",
               pcaps / "robust_ipv6_arkime_v6_mix.pcap", pcaps / "benign_zeek_ntp_sync.pcap"]
    for src in sources:
        data = np.frombuffer(src.read_bytes(), np.uint8)
        for i in range(40):
            d = data.copy()
            idx = rng.integers(4, len(d), size=rng.integers(1, 40))  # keep the magic: damage the rest
            d[idx] = rng.integers(0, 256, size=len(idx))
            if i % 5 == 0:
                d = d[: rng.integers(24, len(d))]
            p = tmp_path / f"m{i}{src.suffix}"
            p.write_bytes(d.tobytes())
            st = DecodeStats()
            m = FlowMeter()
            for b in iter_capture(p, stats=st):
                assert (b.ts_ns >= 0).all()
                m.add(b)
            m.flush()
            assert st.records >= st.packets
