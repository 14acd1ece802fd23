"""Flower ``ClientApp`` (Message API): one organisation, its own data, never shared.

Which organisation a node is comes from its node config:

* ``data-path`` — the organisation's own NF-v2 file (real deployment: each ``flower-supernode``
  gets ``--node-config "data-path='…/NF-UNSW-NB15-v2.parquet'"``);
* otherwise ``partition-id`` (simulation) → the ``orgs`` list sent by the server → its file in
  ``data-dir``.

Every setting a round needs (epochs, learning rate, FedProx mu, attack for robustness runs)
travels in the message's ``ConfigRecord``, so the same app runs under ``flwr run``, under
:func:`flwr.simulation.run_simulation` and on real SuperNodes without other configuration.
What leaves the node: model weights, the number of (unique) training examples (the server
weights by it), and aggregate counts, plain and multiplicity-weighted, (TP/FP/FN/TN per candidate threshold) used to choose the threshold.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl import data, task
from fl.scaffold import CONTROL, CONTROL_DELTA

CI_KEY = "scaffold-c-i"  # this node's control variate, kept in Context.state across rounds
OPT_KEY = "optimizer-state"  # this node's optimizer moments (keep-optimizer), kept the same way
BALANCE_MODES = ("local", "global", "none")

# Two shared cores: one intra-op thread per simulated organisation.
torch.set_num_threads(1)

app = ClientApp()


def _resolve_dir(text: str) -> Path:
    """``data-dir`` as given, else relative to the project root (cwd differs under ``flwr run``)."""
    p = Path(text)
    if p.is_absolute() or p.exists():
        return p
    from phoenix.config import PROJECT_ROOT

    return PROJECT_ROOT / p


def org_data(context: Context, config: dict) -> data.OrgData:
    """This node's prepared data (cached per process across rounds)."""
    max_rows = int(config.get("max-rows", 0))
    seed = int(config.get("split-seed", data.SPLIT_SEED))
    path = context.node_config.get("data-path")
    if path:
        return data.load_org(str(path), seed, max_rows)
    orgs = str(config.get("orgs", ",".join(data.ORGS))).split(",")
    org = orgs[int(context.node_config["partition-id"]) % len(orgs)]
    files = data.org_files(_resolve_dir(str(config.get("data-dir", data.DEFAULT_DATA_DIR))), (org,))
    return data.load_org(files[org], seed, max_rows)


def _model_from(msg: Message) -> torch.nn.Module:
    model = task.make_model(arch=str(msg.content["config"].get("arch", "reference")))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = dict(msg.content["config"])
    d = org_data(context, cfg)
    model = _model_from(msg)
    rnd, rounds = int(cfg.get("server-round", 1)), int(cfg.get("num-rounds", 1))
    # Cosine decay over the federation's rounds: the same schedule centralized training uses per epoch.
    # (constant when the server runs its own optimizer and decays the server learning rate instead).
    lr = float(cfg.get("lr", task.LR))
    if str(cfg.get("lr-schedule", "cosine")) == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * (rnd - 1) / max(rounds, 1)))
    malicious = str(cfg.get("malicious", "")) == d.name and str(cfg.get("attack", "none")) != "none"
    y = d.y_train
    if malicious and cfg["attack"] == "labelflip":
        y = 1.0 - y  # robustness experiment: this organisation trains on inverted labels
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    epochs = int(cfg.get("local-epochs", 1))
    local_steps = int(cfg.get("local-steps", 0))  # > 0: this many batches per round instead of epochs
    local_batch = int(cfg.get("local-batch", 0)) or task.BATCH
    correction, grad_sum, c_i = _scaffold_inputs(msg, context, model)
    # Multiplicity-weighted loss: each unique row counts by how often it occurs in this org's file.
    sample_weight = task.row_weights(d.w_train, str(cfg.get("weighting", "none")), len(y))
    balance = class_balance_mode(cfg)
    # "global": weights the server computed from every node's class counts (see query below).
    class_weight = ((float(cfg["class-weight-neg"]), float(cfg["class-weight-pos"]))
                    if balance == "global" and "class-weight-pos" in cfg else None)
    opt_name = str(cfg.get("local-optimizer", "adamw"))
    opt = task.make_optimizer(model, opt_name, lr, momentum=float(cfg.get("local-momentum", 0.9)))
    keep_opt = bool(cfg.get("keep-optimizer", False))
    if keep_opt and OPT_KEY in context.state.array_records:
        # This node's optimizer moments from its previous round (they never leave the node).
        rec = context.state.array_records[OPT_KEY]
        task.load_optimizer_arrays(opt, {k: rec[k].numpy() for k in rec.keys()}, lr)
    loss = task.train(model, d.x_train, y, epochs, lr=lr, sample_weight=sample_weight, optimizer=opt,
                      proximal_mu=float(cfg.get("proximal-mu", 0.0)), balanced=balance == "local",
                      class_weight=class_weight, max_steps=local_steps, batch=local_batch,
                      seed=int(cfg.get("seed", 0)) * 100_000 + rnd * 10 + data.ORGS.index(d.name)
                      if d.name in data.ORGS else rnd, correction=correction, grad_sum=grad_sum)
    if keep_opt:
        context.state[OPT_KEY] = ArrayRecord({k: Array(v) for k, v in task.optimizer_arrays(opt).items()})
    state = model.state_dict()
    content = {}
    if grad_sum is not None and c_i is not None:
        # SCAFFOLD: the new c_i is this round's mean data gradient; the server gets the change.
        steps = local_steps or epochs * math.ceil(len(y) / local_batch)
        new_c = {name: g / steps for (name, _), g in zip(model.named_parameters(), grad_sum, strict=True)}
        context.state[CI_KEY] = ArrayRecord({k: v.detach().clone() for k, v in new_c.items()})
        content[CONTROL_DELTA] = ArrayRecord({k: (new_c[k] - c_i[k]).detach() for k in new_c})
    if malicious and cfg["attack"] == "scale":
        # Model-replacement style attack: send the global model plus a boosted, sign-flipped update.
        s = float(cfg.get("attack-scale", -10.0))
        state = {k: global_state[k] + s * (v - global_state[k]) for k, v in state.items()}
    metrics = MetricRecord({"train-loss": float(loss), "num-examples": len(d.y_train)})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics, **content}), reply_to=msg)


def _scaffold_inputs(msg: Message, context: Context, model: torch.nn.Module):
    """(c − c_i per parameter, zeroed gradient accumulators, c_i) when the server runs SCAFFOLD."""
    if CONTROL not in msg.content.array_records:
        return None, None, None
    c = msg.content.array_records[CONTROL].to_torch_state_dict()
    names = [n for n, _ in model.named_parameters()]
    if CI_KEY in context.state.array_records:
        c_i = context.state.array_records[CI_KEY].to_torch_state_dict()
    else:
        c_i = {n: torch.zeros_like(c[n]) for n in names}
    correction = [c[n] - c_i[n] for n in names]
    grad_sum = [torch.zeros_like(p) for p in model.parameters()]
    return correction, grad_sum, c_i


def class_balance_mode(cfg: dict) -> str:
    """``class-balance`` (local | global | none); older configs only say ``balanced`` (bool)."""
    mode = str(cfg.get("class-balance", "") or ("local" if bool(cfg.get("balanced", True)) else "none"))
    if mode not in BALANCE_MODES:
        raise ValueError(f"class-balance must be one of {BALANCE_MODES}, not {mode!r}")
    return mode


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Aggregate statistics for the server: this node's training-set size and class totals.

    Two sums and a count (of the loss weights the node would train with), never a row; the
    server adds them over nodes to get the global class balance.
    """
    cfg = dict(msg.content["config"])
    d = org_data(context, cfg)
    w = task.row_weights(d.w_train, str(cfg.get("weighting", "none")), len(d.y_train)).astype(np.float64)
    pos = d.y_train.astype(bool)
    record = {"num-examples": len(d.y_train), "weight-pos": float(w[pos].sum()), "weight-neg": float(w[~pos].sum()),
              "org-id": data.ORGS.index(d.name) if d.name in data.ORGS else -1}
    return Message(RecordDict({"metrics": MetricRecord(record)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = dict(msg.content["config"])
    d = org_data(context, cfg)
    model = _model_from(msg)
    sv, st = task.predict(model, d.x_val), task.predict(model, d.x_test)
    cv, ct = task.counts_at(d.y_val, sv), task.counts_at(d.y_test, st)
    # The same splits with every unique row counted as often as it occurs in the raw file.
    cvw = task.counts_at(d.y_val, sv, weight=d.counts("val"))
    ctw = task.counts_at(d.y_test, st, weight=d.counts("test"))
    m = task.metrics(d.y_test, st, 0.5)
    record = {
        "num-examples": len(d.y_val),
        "org-id": data.ORGS.index(d.name) if d.name in data.ORGS else -1,
        "test-pr-auc": float(m["pr_auc"]) if np.isfinite(m["pr_auc"]) else 0.0,
        **{f"val-{k}": v for k, v in cv.items()},
        **{f"test-{k}": v for k, v in ct.items()},
        **{f"valw-{k}": v for k, v in cvw.items()},
        **{f"testw-{k}": v for k, v in ctw.items()},
    }
    # Provenance for the artifact: which file, its digest and row counts (no rows themselves).
    prov = {k: v for k, v in d.provenance().items() if isinstance(v, str | int | float)}
    return Message(RecordDict({"metrics": MetricRecord(record), "data": ConfigRecord(prov)}), reply_to=msg)
