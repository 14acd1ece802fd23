"""What ``phoenix train`` runs: a baseline or a federated simulation, then artifact and results.

Every run writes ``<results>/<name>.json`` (configuration, per-organisation metrics per round or
epoch, final validation/test metrics, confusion counts, wall time), which :mod:`fl.report` turns
into ``docs/training.md`` and its plots.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fl import baselines, data, preprocess
from fl.model import Artifact, new_version
from phoenix.config import DEFAULT_MODEL

Progress = Callable[[str], None]


def _orgs_arg(text: str) -> tuple[str, ...]:
    orgs = tuple(o.strip() for o in text.split(",") if o.strip())
    bad = [o for o in orgs if o not in data.ORGS]
    if bad:
        raise SystemExit(f"unknown organisation(s) {bad}; known: {list(data.ORGS)}")
    return orgs


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN → None, numpy scalars → Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def save_results(results_dir: str | Path, name: str, doc: dict) -> Path:
    path = Path(results_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Long federations (hundreds of rounds) keep, per round, only what the report plots: each
    # organisation's F1; the chosen round's full metrics are in the document's top level.
    long = len(doc.get("history", [])) > 100
    # Which input encoding made these numbers: runs under different encodings do not compare.
    doc = {**doc, "preprocessing": doc.get("preprocessing") or preprocess.spec()}
    if long:
        doc = {**doc, "history": [_slim(h) for h in doc["history"]]}
    path.write_text(json.dumps(_clean(doc), indent=None if long else 1, separators=(",", ":") if long else None))
    return path


def _slim(entry: dict) -> dict:
    out = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in entry.items() if k != "orgs"}
    out["orgs"] = {org: {split: {"f1": round(float(m[split]["f1"]), 5)} for split in ("val", "test") if split in m}
                   for org, m in entry.get("orgs", {}).items()}
    return out


def provenance(strategy: str, orgs: dict[str, data.OrgData], *, rounds: int, local_epochs: int,
               val: dict, test: dict, extra: dict | None = None) -> dict:
    return {
        "version": new_version(strategy),
        "strategy": strategy,
        "rounds": rounds,
        "local_epochs": local_epochs,
        "data": [d.provenance() for d in orgs.values()],
        "split": {"val": data.VAL_FRACTION, "test": data.TEST_FRACTION, "seed": data.SPLIT_SEED,
                  "dedup": "exact (39 features + Label) per organisation, before splitting"},
        "threshold_from": "validation splits (mean per-organisation F1)",
        "metrics": {"val": _clean(val), "test": _clean(test)},
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }


def _lr(args: argparse.Namespace) -> float:
    """Centralized and local-only baselines train with AdamW at ``--lr`` (default 1e-3)."""
    from fl.task import LR

    return LR if getattr(args, "lr", None) is None else float(args.lr)


def run_centralized(args: argparse.Namespace, log: Progress) -> int:
    orgs = data.load_orgs(args.data, _orgs_arg(args.orgs), max_rows=args.max_rows)
    t0 = time.time()
    weighting = getattr(args, "weighting", "none")
    arch = getattr(args, "arch", "reference")
    model, thr, history = baselines.fit(orgs, orgs, args.epochs, seed=args.seed, lr=_lr(args), progress=log,
                                        weighting=weighting, arch=arch)
    wall = time.time() - t0
    val = baselines.evaluate_orgs(model, orgs, thr, "val")
    test = baselines.evaluate_orgs(model, orgs, thr, "test")
    val_w, test_w = (baselines.weighted_f1(model, orgs, thr, split) for split in ("val", "test"))
    _print_table(log, "centralized", test)
    log("centralized: multiplicity-weighted test F1 " + "  ".join(f"{o}: {f * 100:.2f}" for o, f in test_w.items()))
    out = Path(args.out or DEFAULT_MODEL)
    prov = provenance("centralized", orgs, rounds=0, local_epochs=0, val=val, test=test,
                      extra={"epochs": args.epochs, "best_epoch": max(history, key=lambda h: h["val_f1_mean"])["epoch"],
                             "wall_s": round(wall, 1)})
    Artifact(model, thr, prov).save(out)
    log(f"wrote {out} (threshold {thr:.4f}, version {prov['version']})")
    name = args.name or ("centralized" + ("" if arch == "reference" else f"-{arch}")
                          + ("" if weighting == "none" else f"-w{weighting}"))
    path = save_results(args.results, name, {"kind": "centralized", "name": name, "strategy": "centralized",
                                             "weighting": weighting, "seed": args.seed, "arch": arch,
                                             "val_weighted_f1": val_w,
                                             "test_weighted_f1": test_w,
                                             "epochs": args.epochs, "history": history, "threshold": thr,
                                             "val": val, "test": test, "wall_s": wall, "artifact": str(out),
                                             "version": prov["version"],
                                             "data": {o: d.provenance() for o, d in orgs.items()}})
    log(f"results in {path}")
    return 0


def run_local(args: argparse.Namespace, log: Progress) -> int:
    """One model per organisation on its own rows; each tested on every organisation."""
    orgs = data.load_orgs(args.data, _orgs_arg(args.orgs), max_rows=args.max_rows)
    matrix: dict[str, dict[str, dict]] = {}
    t0 = time.time()
    for name, d in orgs.items():
        model, thr, _ = baselines.fit({name: d}, {name: d}, args.epochs, seed=args.seed, lr=_lr(args), progress=log,
                                      label=f"local:{name}", eval_every=5, arch=getattr(args, "arch", "reference"))
        matrix[name] = baselines.evaluate_orgs(model, orgs, thr, "test")
        log(f"local model of {name}: test F1 " + " ".join(f"{o}={m['f1'] * 100:.2f}" for o, m in matrix[name].items()))
    name = args.name or "local"
    path = save_results(args.results, name, {"kind": "local", "name": name, "strategy": "local",
                                             "epochs": args.epochs, "matrix": matrix, "wall_s": time.time() - t0})
    log(f"results in {path}")
    return 0


def _print_table(log: Progress, label: str, test: dict[str, dict]) -> None:
    log(f"{label}: test  " + "  ".join(f"{o}: F1 {m['f1'] * 100:.2f} P {m['precision'] * 100:.2f} "
                                       f"R {m['recall'] * 100:.2f} FPR {m['fpr'] * 100:.2f}" for o, m in test.items()))


def run_from_args(args: argparse.Namespace, log: Progress) -> int:
    import torch

    # Two cores are shared with the rest of the system: one intra-op thread per trainer.
    torch.set_num_threads(1)
    if args.strategy == "centralized":
        return run_centralized(args, log)
    if args.strategy == "local":
        return run_local(args, log)
    from fl import federated

    return federated.run_from_args(args, log)
