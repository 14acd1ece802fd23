"""The experiment suite behind ``docs/training.md``: ``python -m fl.experiments [--only GROUP...]``.

Every experiment is one ``phoenix train`` invocation (a fresh process each, so every Flower
simulation gets its own Ray runtime); results land in ``docs/results/<name>.json`` and candidate
artifacts in ``runs/candidates/`` (git-ignored). ``phoenix train --report`` then writes the report.
Two lanes run side by side: the machine has two cores and each simulation uses them unevenly.

Groups:
  strategies  every federated strategy, 20 rounds x 2 local epochs (the comparison and the candidates)
  fedopt      the shipped recipe in full (FedAdam, 2000 rounds x 1 local step)
  seeds       the shipped recipe and centralized again with seeds 1 and 2
  periodic    the `periodic` network (--arch periodic): the shipped recipe, and centralized with seeds 0-2
  baselines   centralized and local-only (cross matrix)
  loo         leave-one-organisation-out with FedAvg
  robust      one malicious organisation (label flipping, scaled updates) vs each aggregation
  dp          server-side DP (fixed clipping) at three noise levels
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from fl.data import ORGS

RESULTS = "docs/results"
CANDIDATES = "runs/candidates"
# The last commit whose code (39 scaled inputs, `log1p_cap` v1) made docs/results/v1-scaled/.
HISTORY_COMMIT = "0b0ebb2"
SHIPPED_RECIPE_RUN = "fedadam-r2000"
SEEDS = (1, 2)  # seed 0 is the suite's main run
ROUNDS_SIDE = 10  # robustness/DP/leave-one-out: 10 rounds x 1 epoch keeps the suite within an hour


def suite(groups: set[str]) -> list[list[str]]:
    runs: list[list[str]] = []
    if "strategies" in groups:
        for s in ("fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "multikrum", "scaffold"):
            runs.append(["--strategy", s, "--rounds", "20", "--local-epochs", "2", "--out", f"{CANDIDATES}/{s}.pt"])
        # The shipped recipe at 20 rounds (one local SGD step a round): its wall time is the budget check.
        runs.append(["--strategy", "fedadam", "--rounds", "20", "--out", f"{CANDIDATES}/fedadam.pt"])
    if "fedopt" in groups:
        # The shipped recipe in full: what `phoenix train` runs (server-side Adam over one local SGD
        # step a round). The runs that led to it (FedMedian variants, global class balance, kept
        # optimizer state, 10-step and 2-step rounds, moving averages) were made with the first
        # input encoding; their results are in docs/results/v1-scaled/ and their commands in
        # HISTORY_COMMIT's version of this file.
        runs.append(["--strategy", "fedadam", "--rounds", "2000", "--name", SHIPPED_RECIPE_RUN,
                     "--out", f"{CANDIDATES}/fedadam-r2000.pt"])
    if "seeds" in groups:
        # The shipped recipe and its centralized upper bound from other initial weights and batch
        # orders (same splits): how much of the gap between them is the seed.
        for seed in SEEDS:
            runs.append(["--strategy", "fedadam", "--rounds", "2000", "--seed", str(seed),
                         "--name", f"{SHIPPED_RECIPE_RUN}-seed{seed}", "--out", ""])
            runs.append(["--strategy", "centralized", "--epochs", "60", "--seed", str(seed),
                         "--name", f"centralized-seed{seed}", "--out", f"{CANDIDATES}/centralized-seed{seed}.pt"])
    if "periodic" in groups:
        # Periodic features of the scaled inputs: higher F1 on the NF-v2 test splits, worse on real
        # captures (docs/training.md), so not the shipped network.
        runs.append(["--strategy", "fedadam", "--rounds", "2000", "--arch", "periodic",
                     "--out", f"{CANDIDATES}/fedadam-periodic-r2000.pt"])
        for seed in (0, *SEEDS):
            runs.append(["--strategy", "centralized", "--epochs", "60", "--arch", "periodic", "--seed", str(seed),
                         "--name", "centralized-periodic" + (f"-seed{seed}" if seed else ""),
                         "--out", f"{CANDIDATES}/centralized-periodic" + (f"-seed{seed}" if seed else "") + ".pt"])
    if "baselines" in groups:
        runs.append(["--strategy", "centralized", "--epochs", "60", "--out", f"{CANDIDATES}/centralized.pt"])
        runs.append(["--strategy", "local", "--epochs", "40"])
    side = ["--rounds", str(ROUNDS_SIDE), "--local-epochs", "1", "--out", ""]
    if "loo" in groups:
        for org in ORGS:
            runs.append(["--strategy", "fedavg", "--holdout", org, *side])
    if "robust" in groups:
        for s in ("fedavg", "fedmedian", "fedtrimmedavg", "multikrum"):
            runs.append(["--strategy", s, *side, "--name", f"robust-{s}-none"])
            for attack in ("labelflip", "scale"):
                runs.append(["--strategy", s, *side, "--malicious", "cse", "--attack", attack,
                             "--name", f"robust-{s}-{attack}"])
    if "dp" in groups:
        for noise in (0.0, 0.001, 0.01):
            runs.append(["--strategy", "fedavg", *side, "--dp-noise", str(noise), "--dp-clip", "5.0",
                         "--name", f"dp-fedavg-{noise:g}"])
    return runs


def _run(args: list[str], results: str) -> tuple[list[str], int, float]:
    t0 = time.time()
    cmd = [sys.executable, "-m", "phoenix", "train", *args, "--results", results]
    print("$ phoenix train " + " ".join(a if a else "''" for a in args), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("[", "held-out", "wall", "local model"))]
    print("\n".join(lines[-3:]) or proc.stderr[-2000:], flush=True)
    return args, proc.returncode, time.time() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*",
                   default=["strategies", "fedopt", "seeds", "periodic", "baselines", "loo", "robust", "dp"])
    p.add_argument("--results", default=RESULTS)
    p.add_argument("--lanes", type=int, default=2)
    args = p.parse_args(argv)
    runs = suite(set(args.only))
    failed = 0
    with ThreadPoolExecutor(args.lanes) as pool:
        for _args, rc, wall in pool.map(lambda a: _run(a, args.results), runs):
            print(f"  -> rc {rc} in {wall:.0f}s", flush=True)
            failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
