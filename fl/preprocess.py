"""The one input transform, shared by every organisation, by training and by serving.

The reference fitted a MinMax scaler per organisation and a different one for serving, and its
``*_SECOND_BYTES`` columns (values up to 1e46, an upstream concatenation artefact) squashed every
other value of those features to ~0. This transform needs no statistics at all, so federated
parties agree on it without sharing a single row, and it is bounded whatever arrives.

Every one of the 39 features is scaled, and the features that are codes rather than quantities
are also spelled out, because on a log scale their values sit a hair apart (SYN|ACK = 18 and
SYN|ACK|PSH = 26 differ by 0.01) and the network has to learn very large weights to tell them
apart. On the NF-v2 samples (docs/training.md, "Input encoding" and "Seeds"), centralized
validation mean F1 went from 95.58 with the scaled columns alone to 96.34 (three seeds) with the
codes spelled out.

- 39 columns ``log1p(clip(x, 0, CAP)) / log1p(CAP)`` in [0, 1]: counters spanning 0 to 1e9+
  become evenly spread; 1e46 lands on 1.0 like any value ≥ CAP;
- 24 bits: the eight TCP flags of ``TCP_FLAGS``, ``CLIENT_TCP_FLAGS`` and ``SERVER_TCP_FLAGS``;
- one-hot ``PROTOCOL`` (ICMP, TCP, UDP, ICMPv6, other);
- ``MIN_TTL`` and ``MAX_TTL`` on a linear scale (/255), where 63, 64 and 128 are far apart;
- one-hot nDPI master protocol of ``L7_PROTO`` (a fixed list of well-known ids, plus other);
- one-hot ``DNS_QUERY_TYPE`` (a fixed list of common query types, plus other).

The lists are constants of the code, not learned from data. NaN becomes 0 here only as a last
line of defence: the dataflow dead-letters non-finite rows before they reach the model.
"""

from __future__ import annotations

import numpy as np

from phoenix.schema import FEATURES, N_FEATURES

NAME = "log1p_cap+codes"
VERSION = 2
CAP = float(2**40)  # ~1.1e12: above any real byte, packet or millisecond counter in NF-v2
_SCALE = float(np.log1p(CAP))
_COL = {name: i for i, name in enumerate(FEATURES)}

FLAG_FEATURES = ("TCP_FLAGS", "CLIENT_TCP_FLAGS", "SERVER_TCP_FLAGS")
FLAG_BITS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
PROTOCOLS = (1, 6, 17, 58)  # ICMP, TCP, UDP, ICMPv6
# nDPI protocol ids (ndpi_protocol_ids.h) of the services an IoT gateway and the NF-v2 data see.
L7_MASTERS = {
    0: "Unknown", 1: "FTP_CONTROL", 2: "POP3", 3: "SMTP", 4: "IMAP", 5: "DNS", 7: "HTTP", 8: "MDNS",
    9: "NTP", 10: "NetBIOS", 12: "SSDP", 14: "SNMP", 17: "Syslog", 18: "DHCP", 20: "MySQL",
    27: "CoAP", 41: "SMBv23", 77: "Telnet", 88: "RDP", 89: "VNC", 91: "TLS", 92: "SSH",
    131: "HTTP_Proxy", 188: "QUIC", 222: "MQTT",
}
# DNS query types (RFC 1035 and successors): none, A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, DS,
# DNSKEY, ANY.
DNS_QTYPES = (0, 1, 2, 5, 6, 12, 15, 16, 28, 33, 43, 48, 255)

COLUMNS: tuple[str, ...] = (
    *(f"log:{f}" for f in FEATURES),
    *(f"{f}:{b}" for f in FLAG_FEATURES for b in FLAG_BITS),
    *(f"PROTOCOL:{p}" for p in PROTOCOLS), "PROTOCOL:other",
    "MIN_TTL:linear", "MAX_TTL:linear",
    *(f"L7_PROTO:{name}" for name in L7_MASTERS.values()), "L7_PROTO:other",
    *(f"DNS_QUERY_TYPE:{t}" for t in DNS_QTYPES), "DNS_QUERY_TYPE:other",
)
WIDTH = len(COLUMNS)


def spec() -> dict:
    """What the model artifact records about this transform."""
    return {"name": NAME, "version": VERSION, "cap": CAP, "width": WIDTH}


def check_spec(recorded: dict) -> None:
    """Refuse an artifact trained with a transform this build does not apply."""
    if recorded != spec():
        raise ValueError(f"artifact preprocessing {recorded} differs from this build's {spec()}; "
                         "retrain it with this build (`phoenix train`)")


def scale(x: np.ndarray) -> np.ndarray:
    """The 39 scaled columns alone: raw (n, 39) → float32 in [0, 1]."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=CAP, neginf=0.0)
    np.clip(x, 0.0, CAP, out=x)
    np.log1p(x, out=x)
    x *= 1.0 / _SCALE
    return x.astype(np.float32)


def _one_hot(values: np.ndarray, codes: tuple[int, ...] | list[int], out: np.ndarray) -> None:
    """Write a one-hot of ``values`` over ``codes`` plus a trailing "other" column into ``out``."""
    idx = np.searchsorted(np.asarray(codes), values)
    idx = np.minimum(idx, len(codes) - 1)
    known = np.asarray(codes)[idx] == values
    out[np.arange(len(values)), np.where(known, idx, len(codes))] = 1.0


def transform(x: np.ndarray) -> np.ndarray:
    """Raw NF-v2 feature matrix (n, 39), any numeric dtype → float32 model input (n, WIDTH)."""
    raw = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=CAP, neginf=0.0)
    if raw.ndim != 2 or raw.shape[1] != N_FEATURES:
        raise ValueError(f"expected an (n, {N_FEATURES}) feature matrix, got shape {raw.shape}")
    n = len(raw)
    out = np.zeros((n, WIDTH), np.float32)
    out[:, :N_FEATURES] = scale(raw)
    j = N_FEATURES
    for f in FLAG_FEATURES:
        flags = np.clip(raw[:, _COL[f]], 0, 255).astype(np.uint8)
        out[:, j:j + 8] = np.unpackbits(flags[:, None], axis=1, bitorder="little")
        j += 8
    _one_hot(np.round(raw[:, _COL["PROTOCOL"]]), PROTOCOLS, out[:, j:j + len(PROTOCOLS) + 1])
    j += len(PROTOCOLS) + 1
    out[:, j:j + 2] = np.clip(raw[:, [_COL["MIN_TTL"], _COL["MAX_TTL"]]], 0, 255) / 255.0
    j += 2
    # L7_PROTO is "master.app" as a float (7.178 = HTTP carrying app 178): the master is the integer part.
    _one_hot(np.floor(raw[:, _COL["L7_PROTO"]]), sorted(L7_MASTERS), out[:, j:j + len(L7_MASTERS) + 1])
    j += len(L7_MASTERS) + 1
    _one_hot(np.round(raw[:, _COL["DNS_QUERY_TYPE"]]), DNS_QTYPES, out[:, j:j + len(DNS_QTYPES) + 1])
    j += len(DNS_QTYPES) + 1
    assert j == WIDTH
    return out
