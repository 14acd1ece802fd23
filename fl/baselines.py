"""Non-federated baselines: centralized (all organisations' training rows pooled) and local-only.

Centralized is the upper bound a federation is measured against; it is also what shipped first,
before the federated model existed. Both select the epoch and the decision threshold on
validation data only; test splits are touched once, for the report.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch

from fl import task
from fl.data import OrgData

Progress = Callable[[str], None]


def evaluate_orgs(model: torch.nn.Module, orgs: dict[str, OrgData], threshold: float,
                  split: str = "test") -> dict[str, dict]:
    """Metrics of ``model`` at ``threshold`` on each organisation's ``split``."""
    out = {}
    for name, d in orgs.items():
        x, y = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
        out[name] = task.metrics(y, task.predict(model, x), threshold)
    return out


def weighted_f1(model: torch.nn.Module, orgs: dict[str, OrgData], threshold: float,
                split: str = "test") -> dict[str, float]:
    """F1 of ``split`` with each unique row counted by its multiplicity in the raw file."""
    out = {}
    for name, d in orgs.items():
        c = task.counts_at(getattr(d, f"y_{split}"), task.predict(model, getattr(d, f"x_{split}")),
                           np.array([threshold]), weight=d.counts(split))
        out[name] = float(task.f1_from_counts(c["tp"], c["fp"], c["fn"])[0])
    return out


def val_threshold(model: torch.nn.Module, orgs: dict[str, OrgData]) -> tuple[float, float]:
    """(threshold, mean validation F1) chosen on the organisations' validation splits."""
    counts = [task.counts_at(d.y_val, task.predict(model, d.x_val)) for d in orgs.values()]
    thr = task.choose_threshold(counts)
    f1 = float(np.mean([task.f1_from_counts(c["tp"], c["fp"], c["fn"])[np.argmin(np.abs(task.THRESHOLDS - thr))]
                        for c in counts]))
    return thr, f1


def fit(train_orgs: dict[str, OrgData], val_orgs: dict[str, OrgData], epochs: int, *, seed: int = 0,
        lr: float = task.LR, eval_every: int = 1, progress: Progress | None = None,
        label: str = "centralized", weighting: str = "none",
        arch: str = "reference") -> tuple[torch.nn.Module, float, list[dict]]:
    """Train one model on the pooled training rows of ``train_orgs``.

    Cosine learning-rate decay; after every ``eval_every`` epochs the threshold is chosen on the
    validation splits of ``val_orgs`` and the best (epoch, threshold) by mean validation F1 is
    kept. Returns (model, threshold, history).
    """
    x = np.concatenate([d.x_train for d in train_orgs.values()])
    y = np.concatenate([d.y_train for d in train_orgs.values()])
    # Multiplicity weights (``weighting`` != "none"); plain unweighted loss otherwise, as before.
    sw = None if weighting == "none" else task.row_weights(
        np.concatenate([d.counts("train") for d in train_orgs.values()]), weighting, len(y))
    if sw is not None:
        sw = sw / sw.mean()
    model = task.make_model(seed, arch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=task.WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    best: tuple[float, float, dict] | None = None
    history: list[dict] = []
    t0 = time.time()
    for epoch in range(1, epochs + 1):
        loss = task.train(model, x, y, 1, seed=seed * 1000 + epoch, optimizer=opt, sample_weight=sw)
        sched.step()
        if epoch % eval_every and epoch != epochs:
            continue
        thr, vf1 = val_threshold(model, val_orgs)
        history.append({"epoch": epoch, "loss": loss, "val_f1_mean": vf1, "threshold": thr})
        if best is None or vf1 > best[0]:
            best = (vf1, thr, copy.deepcopy(model.state_dict()))
        if progress:
            progress(f"[{label}] epoch {epoch}/{epochs} loss {loss:.4f} val mean F1 {vf1 * 100:.2f} "
                     f"thr {thr:.3f} ({time.time() - t0:.0f}s)")
    assert best is not None
    model.load_state_dict(best[2])
    model.eval()
    return model, best[1], history
