"""Model, training and evaluation helpers shared by the Flower apps and the baselines.

One place for the training loop, so centralized, local-only and every federated client train
the same way (same optimizer, batch size, loss), and one place for metrics, so every table in
the report means the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torch import nn

from fl.model import ARCHITECTURES, PhoenixMLP

# Training hyper-parameters. The architecture, loss and AdamW are the reference's; the learning
# rate is 10x its 1e-4 and weight decay lower, chosen on validation F1 (never test) because the
# de-duplicated data is ~15x smaller than what the reference trained on.
LR = 1e-3
WEIGHT_DECAY = 1e-4
BATCH = 512

# Candidate decision thresholds: dense in logit space so the extremes (0.001, 0.999) are reachable.
THRESHOLDS: np.ndarray = 1.0 / (1.0 + np.exp(-np.linspace(-9.0, 9.0, 181)))


WEIGHTINGS = ("none", "log", "sqrt", "count")


def row_weights(counts: np.ndarray | None, mode: str, n: int) -> np.ndarray:
    """Loss weight of each unique row from its multiplicity ``counts``.

    ``none``: 1; ``log``: 1 + log(count); ``sqrt``: sqrt(count); ``count``: the raw count.
    """
    if counts is None or mode == "none":
        return np.ones(n, dtype=np.float32)
    c = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    if mode == "log":
        w = 1.0 + np.log(c)
    elif mode == "sqrt":
        w = np.sqrt(c)
    elif mode == "count":
        w = c
    else:
        raise ValueError(f"unknown weighting {mode!r}; one of {WEIGHTINGS}")
    return w.astype(np.float32)


def make_model(seed: int = 0, arch: str = "reference") -> PhoenixMLP:
    """A fresh network of the named architecture (:data:`fl.model.ARCHITECTURES`)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; one of {sorted(ARCHITECTURES)}")
    torch.manual_seed(seed)
    return PhoenixMLP(**ARCHITECTURES[arch])


def get_weights(model: nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Iterable[np.ndarray]) -> None:
    keys = list(model.state_dict().keys())
    state = {k: torch.from_numpy(np.asarray(w).copy()) for k, w in zip(keys, weights, strict=True)}
    model.load_state_dict(state, strict=True)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, *, lr: float = LR,
          weight_decay: float = WEIGHT_DECAY, batch: int = BATCH, proximal_mu: float = 0.0,
          seed: int = 0, optimizer: torch.optim.Optimizer | None = None, balanced: bool = False,
          correction: list[torch.Tensor] | None = None, grad_sum: list[torch.Tensor] | None = None,
          sample_weight: np.ndarray | None = None, class_weight: tuple[float, float] | None = None,
          max_steps: int = 0) -> float:
    """Train in place; return the mean loss of the last epoch.

    With ``proximal_mu > 0`` (FedProx) the loss gets ``mu/2 * ||w - w_global||^2`` on *every*
    batch: ``w_global`` is frozen before the first step. (The reference read the "global"
    weights from the model being trained, so its term vanished after the first batch.)

    ``sample_weight`` (e.g. :func:`row_weights` of the rows' multiplicities) scales each row's loss;
    with ``balanced`` the class balance is computed on those weights (both classes get equal total
    weight) and everything is normalised to mean 1, so the learning rate keeps its meaning.

    ``class_weight`` = (negative, positive) weights fixed from outside (federated *global* class
    balance: computed by the server from every node's class counts). They multiply
    ``sample_weight`` and are not re-normalised per node, so the nodes' losses add up to the
    pooled, globally balanced loss; ``balanced`` is ignored then.

    ``max_steps > 0`` stops after that many batches (``epochs`` is raised to cover them).

    SCAFFOLD: ``correction`` (c − c_i, one tensor per parameter) is added to every batch gradient,
    and the raw data gradients are summed into ``grad_sum`` so the caller can update c_i.
    """
    model.train()
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    opt = optimizer or torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss(reduction="none")
    sample_w = None
    if max_steps > 0:
        epochs = max(epochs, -(-max_steps // max(-(-len(y) // batch), 1)))
    if class_weight is not None:
        sw = np.ones(len(y), dtype=np.float64) if sample_weight is None else np.asarray(sample_weight, np.float64)
        sw = sw * np.where(y.astype(bool), float(class_weight[1]), float(class_weight[0]))
        sample_w = torch.from_numpy(sw.astype(np.float32))
    elif balanced or sample_weight is not None:
        sw = np.ones(len(y), dtype=np.float64) if sample_weight is None else np.asarray(sample_weight, np.float64)
        if balanced:
            sw = sw * class_weights(y, sw)
        sample_w = torch.from_numpy((sw / max(sw.mean(), 1e-12)).astype(np.float32))
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    last = float("nan")
    steps = 0
    for _ in range(epochs):
        perm = torch.randperm(len(yt), generator=gen)
        total, n = 0.0, 0
        for start in range(0, len(perm), batch):
            if max_steps > 0 and steps >= max_steps:
                break
            steps += 1
            idx = perm[start:start + batch]
            opt.zero_grad(set_to_none=True)
            per_row = loss_fn(model(xt[idx]), yt[idx])
            loss = (per_row * sample_w[idx]).mean() if sample_w is not None else per_row.mean()
            if global_params is not None:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True))
                loss = loss + 0.5 * proximal_mu * prox
            loss.backward()
            if grad_sum is not None or correction is not None:
                for j, p in enumerate(model.parameters()):
                    if grad_sum is not None:
                        grad_sum[j] += p.grad
                    if correction is not None:
                        p.grad += correction[j]
            opt.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        last = total / max(n, 1) if n else last
    return last


def class_weights(y: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
    """Per-row weights that give both classes of this data set equal total weight (mean 1).

    With ``base`` (per-row weights), the classes' totals of ``base`` are equalised instead.
    """
    y = y.astype(bool)
    if base is not None and len(y):
        tot = float(np.sum(base))
        p = float(np.sum(base[y])) / tot if tot > 0 else 0.5
    else:
        p = float(y.mean()) if len(y) else 0.5
    if p in (0.0, 1.0):
        return np.ones(len(y), dtype=np.float32)
    return np.where(y, 0.5 / p, 0.5 / (1.0 - p)).astype(np.float32)


@torch.inference_mode()
def predict(model: nn.Module, x: np.ndarray, batch: int = 65536) -> np.ndarray:
    """P(malicious) for already-transformed inputs."""
    model.eval()
    out = [torch.sigmoid(model(torch.from_numpy(x[i:i + batch]))).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.empty(0, dtype=np.float32)


def counts_at(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray = THRESHOLDS,
              weight: np.ndarray | None = None) -> dict[str, list]:
    """TP/FP/FN/TN at each candidate threshold: aggregate counts, safe to send to a server.

    With ``weight`` (each row's multiplicity) the counts are weighted sums instead.
    """
    y = y.astype(bool)
    if weight is not None:
        w = np.asarray(weight, dtype=np.float64)
        out = {}
        for key, mask in (("tp", y), ("fp", ~y)):
            order = np.argsort(scores[mask], kind="stable")
            s_sorted, w_cum = scores[mask][order], np.concatenate([[0.0], np.cumsum(w[mask][order])])
            below = np.searchsorted(s_sorted, thresholds, side="left")
            out[key] = w_cum[-1] - w_cum[below]
        pos_total, neg_total = float(w[y].sum()), float(w[~y].sum())
        return {"tp": out["tp"].tolist(), "fp": out["fp"].tolist(), "fn": (pos_total - out["tp"]).tolist(),
                "tn": (neg_total - out["fp"]).tolist()}
    pos = np.sort(scores[y])
    neg = np.sort(scores[~y])
    tp = len(pos) - np.searchsorted(pos, thresholds, side="left")
    fp = len(neg) - np.searchsorted(neg, thresholds, side="left")
    return {"tp": tp.tolist(), "fp": fp.tolist(), "fn": (len(pos) - tp).tolist(), "tn": (len(neg) - fp).tolist()}


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)


def choose_threshold(per_org_counts: list[dict[str, list[int]]], thresholds: np.ndarray = THRESHOLDS) -> float:
    """The threshold maximising the mean of per-organisation validation F1.

    Mean over organisations, not pooled F1, so the small organisations count as much as the
    big one; the counts come from validation splits only.
    """
    f1s = np.mean([f1_from_counts(c["tp"], c["fp"], c["fn"]) for c in per_org_counts], axis=0)
    best = np.flatnonzero(f1s >= f1s.max() - 1e-12)
    # Among ties take the middle one: least sensitive to a small shift in scores.
    return float(thresholds[best[len(best) // 2]])


def metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | int]:
    """accuracy, precision, recall, F1, FPR (at ``threshold``) and PR-AUC (threshold-free)."""
    y = y.astype(bool)
    pred = scores >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(np.sum(~pred & ~y))
    n = len(y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    pr_auc = float(average_precision_score(y, scores)) if 0 < y.sum() < n else float("nan")
    return {
        "rows": n, "accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall,
        "f1": f1, "fpr": fp / (fp + tn) if fp + tn else 0.0, "pr_auc": pr_auc,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn, "threshold": float(threshold),
    }


LOCAL_OPTIMIZERS = ("adamw", "sgd")


def make_optimizer(model: nn.Module, name: str = "adamw", lr: float = LR, momentum: float = 0.9,
                   weight_decay: float = WEIGHT_DECAY) -> torch.optim.Optimizer:
    """A node's local optimizer: AdamW (as centralized) or SGD with momentum (for server-side optimizers)."""
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown local optimizer {name!r}; one of {LOCAL_OPTIMIZERS}")


def optimizer_arrays(opt: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """The optimizer's per-parameter state (moments, step) as named arrays, for ``Context.state``."""
    out: dict[str, np.ndarray] = {}
    for idx, st in opt.state_dict()["state"].items():
        for key, val in st.items():
            arr = val.detach().cpu().numpy() if torch.is_tensor(val) else np.asarray(val, dtype=np.float32)
            out[f"{idx}/{key}"] = np.array(arr, copy=True, order="C")  # keeps 0-d arrays (step) 0-d
    return out


def load_optimizer_arrays(opt: torch.optim.Optimizer, arrays: dict[str, np.ndarray], lr: float) -> None:
    """Restore :func:`optimizer_arrays` into ``opt`` (same model layout); the learning rate stays ``lr``."""
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for name, arr in arrays.items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = torch.from_numpy(np.asarray(arr).copy())
    sd["state"] = state
    opt.load_state_dict(sd)
    for group in opt.param_groups:
        group["lr"] = lr
