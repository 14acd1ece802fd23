"""Every real capture in ../shared/data/pcaps decodes and meters without a crash, one test per
category, plus the offline commands (``phoenix features`` / ``phoenix scan --json``) end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from flows.meter import meter_file
from phoenix.config import DEFAULT_MODEL, PROJECT_ROOT
from phoenix.schema import FEATURES

PCAPS = PROJECT_ROOT.parent / "shared" / "data" / "pcaps"
ALL = sorted(p for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))


def by_prefix(prefix: str):
    return [p for p in ALL if p.name.startswith(prefix)]


def check(path, min_flows=1):
    r = meter_file(str(path))
    assert r.records.features.shape == (len(r.records), len(FEATURES))
    assert len(r.records) >= min_flows, path.name
    f = r.records.features
    assert (f >= 0).all() and not (f != f).any(), path.name  # counters never negative, no NaN
    return r


@pytest.mark.parametrize("path", by_prefix("benign_"), ids=lambda p: p.name)
def test_benign_captures(path):
    r = check(path)
    assert r.decode["malformed"] == 0 and not r.decode["errors"]


@pytest.mark.parametrize("path", by_prefix("mal_"), ids=lambda p: p.name)
def test_malicious_captures(path):
    check(path)


def test_malicious_flow_counts_match_the_manifest():
    assert len(meter_file(str(PCAPS / "mal_scan_ndpi_nmap_synscan.pcap")).records) == 1994
    assert len(meter_file(str(PCAPS / "mal_dos_sv_syn_flood_443.pcap")).records) == 200
    assert len(meter_file(str(PCAPS / "mal_bruteforce_zeek_ssh_sshguess.pcap")).records) == 11
    # masscan: 1001 probed ports; the capture also has one extra exchange on a reused port
    assert 1001 <= len(meter_file(str(PCAPS / "mal_scan_esnet_masscan_tcp_syn_0-1000.pcap")).records) <= 1003


ROBUST = {  # file: (decoded IP packets, flows, error substring or None)
    "robust_file_arkime_bigendian.pcap": (2, 1, None),
    "robust_file_arkime_empty.pcap": (0, 0, None),
    "robust_file_sv_fuzz_corrupt_record.pcap": (1, 1, "corrupt record header"),
    "robust_file_zeek_nanosecond_http_to_ssh.pcap": (9, 1, None),
    "robust_frag_zeek_ipv4_fragmented.pcap": (5, 1, None),
    "robust_ipv6_arkime_v6_mix.pcap": (161, None, None),
    "robust_linktype_sv_null_ipv6_http.pcap": (14, 1, None),
    "robust_pcapng_zeek_multi_interface.pcapng": (6, 3, None),
    "robust_trunc_zeek_trunc_hdr_caplen_gt_snaplen.pcap": (0, 0, None),
    "robust_vlan_arkime_qinq_twovlan.pcap": (6, 1, None),
}


@pytest.mark.parametrize("name", sorted(ROBUST))
def test_robustness_captures(name):
    packets, flows, err = ROBUST[name]
    r = meter_file(str(PCAPS / name))
    assert r.packets == packets
    if flows is not None:
        assert len(r.records) == flows
    if err:
        assert any(err in e for e in r.decode["errors"])
    if name.startswith("robust_trunc"):
        assert r.decode["truncated"] == 1


def test_all_captures_are_covered():
    assert len(ALL) == len(by_prefix("benign_")) + len(by_prefix("mal_")) + len(ROBUST)


def test_fragments_reassemble_into_one_flow_with_ports():
    r = meter_file(str(PCAPS / "robust_frag_zeek_ipv4_fragmented.pcap"))
    k = r.records.keys.to_pylist()[0]
    assert k["src_port"] != 0 and k["dst_port"] != 0
    assert r.records.features[0, FEATURES.index("IN_PKTS")] + r.records.features[0, FEATURES.index("OUT_PKTS")] == 5


def phoenix(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phoenix", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)


def test_features_command_writes_one_row_per_flow(tmp_path):
    out = tmp_path / "f.parquet"
    p = phoenix("features", str(PCAPS / "benign_zeek_http_browsing.pcap"), "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    t = pq.read_table(out)
    assert doc["flows"] == t.num_rows == 13
    for c in ("src_addr", "src_port", "dst_addr", "dst_port", "protocol", "first_seen_ns", "last_seen_ns", *FEATURES):
        assert c in t.column_names


def test_scan_command_json_contract(tmp_path):
    from fl.model import Artifact, PhoenixMLP

    model = tmp_path / "m.pt"
    Artifact(PhoenixMLP(), provenance={"version": "test"}).save(model)
    files = [PCAPS / "mal_dos_sv_syn_flood_443.pcap", PCAPS / "robust_file_sv_fuzz_corrupt_record.pcap",
             PCAPS / "benign_zeek_mqtt.pcap"]
    out = tmp_path / "v.parquet"
    p = phoenix("scan", *map(str, files), "--model", str(model), "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert {"files", "packets", "flows", "malicious_flows", "errors"} <= set(doc)
    assert doc["files"] == 3 and doc["flows"] == 200 + 1 + 2 and doc["packets"] == 200 + 1 + 19
    assert len(doc["errors"]) == 1 and "corrupt record header" in doc["errors"][0]
    t = pq.read_table(out)
    assert t.num_rows == doc["flows"] and int(sum(t.column("malicious").to_pylist())) == doc["malicious_flows"]


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="no shipped model yet")
def test_shipped_model_on_benign_iot_captures():
    """Benign IoT captures are mostly not flagged by the shipped model (docs/packets.md)."""
    from capture.commands import scan

    doc = scan([str(p) for p in by_prefix("benign_")])
    assert doc["malicious_flows"] / doc["flows"] < 0.25, doc["per_file"]


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="no shipped model yet")
def test_shipped_model_and_context_flag_the_attack_captures():
    """Scans, the SYN flood, brute force and SQL injection are flagged (docs/packets.md)."""
    from capture.commands import scan

    names = ["mal_scan_ndpi_nmap_synscan.pcap", "mal_scan_esnet_masscan_tcp_syn_0-1000.pcap",
             "mal_dos_sv_syn_flood_443.pcap", "mal_bruteforce_zeek_ssh_sshguess.pcap",
             "mal_web_ndpi_sqli_cicids2017.pcap"]
    doc = scan([str(PCAPS / n) for n in names])
    for n in names:
        v = doc["per_file"][n]
        assert v["malicious_flows"] / v["flows"] >= 0.9, (n, v)
    # scans and floods come from the context detectors, the rest from the model
    assert doc["per_file"]["mal_dos_sv_syn_flood_443.pcap"]["by_context"] == 200
    assert doc["per_file"]["mal_bruteforce_zeek_ssh_sshguess.pcap"]["by_model"] == 11
