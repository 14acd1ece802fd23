"""``phoenix train`` end to end on small real samples: a 2-round Flower simulation and the
centralized baseline, each writing a loadable artifact and its results JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fl.model import load_artifact
from phoenix.config import PROJECT_ROOT


def _train(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "phoenix", "train", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("strategy", ["fedprox", "scaffold"])
def test_two_round_simulation(tmp_path, strategy: str) -> None:
    out, results = tmp_path / "fed.pt", tmp_path / "results"
    proc = _train("--strategy", strategy, "--rounds", "2", "--local-epochs", "1", "--max-rows", "1200",
                  "--out", str(out), "--results", str(results), "--name", f"ci-{strategy}")
    assert "round 1/2" in proc.stderr and "round 2/2" in proc.stderr  # progress per round
    art = load_artifact(out)
    prov = art.provenance
    assert prov["strategy"] == strategy and prov["rounds"] == 2 and prov["local_epochs"] == 1
    assert {d["org"] for d in prov["data"]} == {"bot", "ton", "unsw", "cse"}
    assert all(d["sha256_16"] and d["rows"] > d["unique_rows"] > 0 for d in prov["data"])
    assert set(prov["metrics"]["test"]) == {"bot", "ton", "unsw", "cse"}
    assert 0.0 < art.threshold < 1.0
    doc = json.loads((results / f"ci-{strategy}.json").read_text())
    assert [h["round"] for h in doc["history"]] == [1, 2]
    for h in doc["history"]:
        assert set(h["orgs"]) == {"bot", "ton", "unsw", "cse"}
        assert all(0.0 <= m["test"]["f1"] <= 1.0 for m in h["orgs"].values())


def test_global_balance_kept_optimizer_and_ema(tmp_path) -> None:
    """The class-count query round, server-sent global class weights and per-node optimizer state
    kept in Context.state across rounds, with a server-side optimizer strategy on top, and the
    server's moving average of the global model (--ema) evaluated and saved; nodes and server
    build the network the run names (--arch periodic)."""
    results, out = tmp_path / "results", tmp_path / "ema.pt"
    proc = _train("--strategy", "fedavgm", "--class-balance", "global", "--keep-optimizer", "--local-steps", "3",
                  "--rounds", "2", "--max-rows", "1200", "--ema", "0.5", "--arch", "periodic", "--out", str(out),
                  "--results", str(results))
    assert "global class balance from 4 nodes" in proc.stderr and "round 2/2" in proc.stderr
    name = "fedavgm-periodic-r2-s3-keepopt-ema0.5"  # the derived run name records the network and EMA decay
    doc = json.loads((results / f"{name}.json").read_text())
    neg, pos = doc["class_weights"]
    assert neg > 0 and pos > 0 and doc["config"]["class-balance"] == "global"
    assert doc["config"]["keep-optimizer"] is True and doc["config"]["local-steps"] == 3
    assert doc["ema"] == 0.5 and [h["round"] for h in doc["history"]] == [1, 2]
    art = load_artifact(out)
    assert art.provenance["ema"] == 0.5 and art.provenance["selected_round"] == doc["best_round"]
    assert art.provenance["evaluated_model"].startswith("exponential moving average")
    assert art.model.architecture()["periodic"] == [16.0, 64.0, 256.0, 1024.0] and doc["config"]["arch"] == "periodic"


def test_centralized_baseline(tmp_path) -> None:
    out = tmp_path / "central.pt"
    _train("--strategy", "centralized", "--epochs", "2", "--max-rows", "1000", "--out", str(out),
           "--results", str(tmp_path))
    art = load_artifact(out)
    assert art.provenance["strategy"] == "centralized"
    assert set(art.provenance["metrics"]["val"]) == {"bot", "ton", "unsw", "cse"}
    assert (tmp_path / "centralized.json").exists()
