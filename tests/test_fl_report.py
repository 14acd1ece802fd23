"""Report sections computed from results documents (pure logic on hand-made results)."""

from __future__ import annotations

from fl import report
from fl.data import ORGS


def _run(f1s: dict[str, float], val: float = 0.9) -> dict:
    return {"test": {o: {"f1": f} for o, f in f1s.items()}, "val": {o: {"f1": val} for o in ORGS}}


def test_seeds_section_pairs_each_federated_seed_with_its_centralized_seed() -> None:
    fed0 = _run({"bot": 0.99, "ton": 0.95, "unsw": 0.92, "cse": 0.93})
    cen0 = _run({"bot": 0.995, "ton": 0.96, "unsw": 0.93, "cse": 0.94})
    fed1 = _run({"bot": 0.99, "ton": 0.97, "unsw": 0.90, "cse": 0.94})
    cen1 = _run({"bot": 0.99, "ton": 0.96, "unsw": 0.925, "cse": 0.94})
    runs = {report.SHIPPED_RECIPE_RUN: fed0, "centralized": cen0,
            f"{report.SHIPPED_RECIPE_RUN}-seed1": fed1, "centralized-seed1": cen1}
    text = "\n".join(report.seeds_section(runs))
    # Worst gap: UNSW-NB15 of seed 1, 90.00 - 92.50.
    assert "is -2.50 points" in text
    assert "| 1 | 90.00 / 90.00 | 99.00 / 99.00 (+0.00) | 97.00 / 96.00 (+1.00) | 90.00 / 92.50 (-2.50)" in text
    # Means over both seeds: ToN (95 + 97) / 2 = 96 against (96 + 96) / 2.
    assert text.splitlines()[-1].startswith("| mean |") and "96.00 / 96.00 (+0.00)" in text.splitlines()[-1]
    # One pair alone is not a seed study.
    assert report.seeds_section({report.SHIPPED_RECIPE_RUN: fed0, "centralized": cen0}) == []


def test_tree_check_sentence_caps_f1_by_the_missed_hard_class() -> None:
    """26 hard rows, the best model flags 2: 24 missed out of 366 attacks caps F1 at 2·342/(2·342+24)."""
    hard = {"org": "cse", "class": "Infilteration", "rows": 26, "test_attacks": 366}
    doc = {"models": {
        "trees": {"val_f1_mean": 0.97, "test_f1": {o: 0.95 for o in ORGS}, "hard_class": {**hard, "flagged": 2}},
        "forest": {"val_f1_mean": 0.96, "test_f1": {o: 0.94 for o in ORGS}, "hard_class": {**hard, "flagged": 1}}},
        "shipped_hard_class": {**hard, "flagged": 1}}
    text = report.tree_check_sentence(doc)
    assert "they flag 2 and 1, the shipped model 1" in text
    assert "Missing 24 of them caps CSE-CIC F1 at 96.6," in text  # 684 / 708
    assert report.tree_check_sentence(None) == ""


def test_reference_sentence_names_the_targets_each_model_reaches() -> None:
    """Targets BoT 99.9, ToN 97, UNSW 94.2, CSE 97.5: 97.0 on ToN reaches it, 99.89 on BoT does not."""
    shipped = _run({"bot": 0.9989, "ton": 0.970, "unsw": 0.93, "cse": 0.95})["test"]
    central = _run({"bot": 0.9995, "ton": 0.975, "unsw": 0.93, "cse": 0.95})["test"]
    assert report.targets_met(shipped) == (["ton"], ["bot", "unsw", "cse"])
    text = report.reference_sentence(shipped, central)
    assert "the shipped model reaches it on ToN-IoT, centralized on BoT-IoT, ToN-IoT." in text
    assert "Not on BoT-IoT, UNSW-NB15, CSE-CIC-IDS2018;" in text
    periodic = {report.PERIODIC_FED_RUN: {"test": shipped}, report.PERIODIC_CENTRAL_RUN: {"test": central}}
    assert ("with `centralized-periodic` on BoT-IoT, ToN-IoT and `fedadam-periodic-r2000` on ToN-IoT, but is not"
            in report.periodic_sentence(periodic))
    assert report.periodic_sentence({}) == ""


def test_model_section_rows_per_model_with_seed_means() -> None:
    """Seed 0 of each network, and the mean over seeds where a network has more than one."""
    cen = _run({o: 0.90 for o in ORGS})
    cen1 = _run({o: 0.94 for o in ORGS}, val=0.8)
    runs = {"centralized": cen, "centralized-seed1": cen1, report.PERIODIC_CENTRAL_RUN: _run({o: 0.95 for o in ORGS}),
            report.PERIODIC_FED_RUN: _run({o: 0.91 for o in ORGS})}
    lines = report.model_section(runs, history={})
    rows = [line for line in lines if line.startswith(("| centralized |", "| FedAdam"))]
    assert len(rows) == 4  # reference seed 0 and mean of 2; periodic centralized; periodic federated
    assert "shipped | mean of 2 | 85.00 | 92.00 | 92.00 | 92.00 | 92.00 |" in next(r for r in rows if "mean of 2" in r)
    assert rows[2].startswith("| centralized | the same inputs, `periodic` network | 0 | 90.00 | 95.00 |")
    assert rows[3].startswith("| FedAdam") and "`periodic` network | 0 | 90.00 | 91.00 |" in rows[3]


def test_capture_section_counts_benign_and_attack_flows_per_model() -> None:
    def counts(flows: int, model: int, flagged: int) -> dict:
        return {"packets": flows, "flows": flows, "malicious_flows": flagged, "by_model": model,
                "by_context": flagged - model}

    doc = {"captures": ["benign_a.pcap", "benign_b.pcap", "mal_scan_ndpi_nmap_synscan.pcap", "robust_x.pcap"],
           "models": {"shipped": {"version": "v1", "architecture": {"periodic": []}, "per_file": {
               "benign_a.pcap": counts(10, 2, 2), "benign_b.pcap": counts(1200, 1, 1),
               "mal_scan_ndpi_nmap_synscan.pcap": counts(1994, 16, 1994), "robust_x.pcap": counts(1, 1, 1)}}}}
    lines = report.capture_section(doc)
    assert "| model | network | benign flagged | nmap SYN scan |" in lines
    assert "| `shipped` (v1) | `reference` | 3 / 1,210 | 16 (1,994) / 1,994 |" in lines
    assert report.capture_section(None) == []
