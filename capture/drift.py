"""Feature drift: the meter's features on real captures versus the NF-v2 training distributions.

Run ``python -m capture.drift`` (prints the Markdown tables of docs/packets.md). For each feature
it compares, in the model's own input scale (``fl.preprocess.scale``: log1p, capped, in
[0, 1]), our flows against training rows of the same class:

* ``w1``: 1-Wasserstein distance (mean absolute difference of 101 quantiles) between our flows
  and training rows;
* ``unseen``: share of our flows whose exact value never occurs in any training row of that
  protocol (values the model cannot have learned anything about).

Attack captures are compared with training attack rows, benign captures with benign rows, each
with the nProbe export quirks on (what ships) and off (a faithful meter).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from phoenix.config import SHARED_DATA
from phoenix.schema import FEATURES

NF_FILES = ("NF-BoT-IoT-v2", "NF-ToN-IoT-v2", "NF-UNSW-NB15-v2", "NF-CSE-CIC-IDS2018-v2")
ATTACK_CAPTURES = ("mal_scan_ndpi_nmap_synscan.pcap", "mal_scan_esnet_masscan_tcp_syn_0-1000.pcap",
                   "mal_dos_sv_syn_flood_443.pcap", "mal_bruteforce_zeek_ssh_sshguess.pcap")


def training(nf_dir: Path = SHARED_DATA / "nf"):
    import pandas as pd

    return pd.concat([pd.read_parquet(nf_dir / f"{f}.parquet") for f in NF_FILES], ignore_index=True)


def meter_captures(paths: list[Path], quirks: bool) -> np.ndarray:
    from flows.meter import MeterConfig, meter_file

    cfg = MeterConfig(nprobe_quirks=quirks)
    return np.concatenate([meter_file(str(p), cfg).records.features for p in paths] or [np.zeros((0, 39))])


def drift_table(ours: np.ndarray, train: np.ndarray, train_protocols: np.ndarray) -> list[dict]:
    from fl.preprocess import scale

    zo, zt = scale(ours), scale(train)
    q = np.linspace(0, 1, 101)
    rows = []
    for j, name in enumerate(FEATURES):
        w1 = float(np.mean(np.abs(np.quantile(zo[:, j], q) - np.quantile(zt[:, j], q)))) if len(zo) else 0.0
        unseen = 0
        for proto in np.unique(ours[:, 0]):
            seen = np.unique(train[train_protocols == proto, j])
            vals = ours[ours[:, 0] == proto, j]
            unseen += int((~np.isin(vals, seen)).sum())
        rows.append({"feature": name, "w1": w1, "unseen": unseen / max(1, len(ours))})
    return rows


def report(pcap_dir: Path = SHARED_DATA / "pcaps") -> str:
    df = training()
    x = df[list(FEATURES)].to_numpy(np.float64)
    lab = df["Label"].to_numpy()
    protos = x[:, 0]
    attack = [pcap_dir / n for n in ATTACK_CAPTURES]
    benign = sorted(pcap_dir.glob("benign_*.pcap"))
    out = []
    sets = {}
    for quirks in (False, True):
        sets[("attack", quirks)] = drift_table(meter_captures(attack, quirks), x[lab == 1], protos[lab == 1])
        sets[("benign", quirks)] = drift_table(meter_captures(benign, quirks), x[lab == 0], protos[lab == 0])
    out.append("| feature | attack W1 faithful | attack W1 quirks | attack unseen faithful | attack unseen quirks "
               "| benign W1 faithful | benign W1 quirks | benign unseen faithful | benign unseen quirks |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for j, name in enumerate(FEATURES):
        cells = []
        for cls in ("attack", "benign"):
            cells += [f"{sets[(cls, False)][j]['w1']:.3f}", f"{sets[(cls, True)][j]['w1']:.3f}",
                      f"{sets[(cls, False)][j]['unseen']:.0%}", f"{sets[(cls, True)][j]['unseen']:.0%}"]
        out.append(f"| {name} | " + " | ".join(cells[:4]) + " | " + " | ".join(cells[4:]) + " |")
    tot = {k: sum(r["w1"] for r in v) for k, v in sets.items()}
    out.append(f"| **sum** | {tot[('attack', False)]:.3f} | {tot[('attack', True)]:.3f} | | | "
               f"{tot[('benign', False)]:.3f} | {tot[('benign', True)]:.3f} | | |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(report() + "\n")
