"""Flower ``ServerApp`` (Message API): strategy from the run config, per-organisation metrics,
validation-chosen threshold, and the model artifact.

Run config keys (``[tool.flwr.app.config]`` in pyproject, ``flwr run . --run-config``, or
:data:`OVERRIDES` for the in-process simulation of ``phoenix train``): see :data:`DEFAULTS`.

Strategies (``strategy``): ``fedavg``, ``fedprox`` (the client adds ``mu/2·||w − w_global||²`` on
every batch), ``fedmedian``, ``fedtrimmedavg`` (β = 0.25: with four organisations one is cut from
each end), ``multikrum`` (f = 1 assumed attacker, averages the n − 2 most central updates),
``scaffold`` (FedAvg plus control variates against client drift, :mod:`fl.scaffold`).
``dp-noise ≥ 0`` wraps any of them in Flower's server-side fixed-clipping DP. ``ema > 0`` wraps the
result in :class:`EMAStrategy`: the server keeps an exponential moving average (Polyak averaging)
of the global model, training continues from the raw global model, and the averaged model is what
the nodes evaluate, what validation picks the round of, and what the artifact holds.

Each evaluation round every organisation returns TP/FP/FN/TN counts of its validation and test
splits at a grid of thresholds. The server picks the threshold that maximises the mean
per-organisation *validation* F1 and reports every organisation's metrics at that threshold:
no row leaves a node, and test data never chooses anything.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    MultiKrum,
    Strategy,
)

from fl import task
from fl.data import ORGS
from fl.scaffold import Scaffold

DEFAULTS: dict[str, Any] = {
    "num-server-rounds": 2000,
    "local-epochs": 2,            # used when local-steps is 0
    "strategy": "fedadam",
    "arch": "reference",          # fl.model.ARCHITECTURES
    "data-dir": "../shared/data/nf",
    "orgs": ",".join(ORGS),       # partition-id i of a simulation is the i-th organisation here
    # "auto" (the keys of RECIPES): the value of the strategy's recipe, see resolve().
    "lr": "auto",
    # Class-balanced local loss (recipe "local"): BoT-IoT is 97 % attacks, CSE-CIC 10 %; unweighted,
    # each node's update mostly drags the output bias towards its own prior. "global": before round 1
    # every node reports its class totals (two numbers), the server sums them and sends the pooled
    # class weights with each round, so the nodes' losses add up to one globally balanced loss.
    # "none": plain loss. "balanced" = false is the older spelling of "none".
    "class-balance": "auto",
    "balanced": True,
    "local-steps": "auto",        # > 0: batches per round instead of local-epochs
    "local-batch": 0,             # rows per local batch; 0: task.BATCH (512, as centralized)
    "local-optimizer": "auto",    # adamw | sgd (with local-momentum)
    "local-momentum": "auto",
    "keep-optimizer": False,      # each node keeps its optimizer moments in Context.state across rounds
    "server-lr": "auto",          # fedavgm: server learning rate; fedadam/fedyogi: eta (cosine decay over rounds)
    "server-momentum": "auto",    # fedavgm: server momentum; fedadam/fedyogi: beta_1
    "server-tau": "auto",         # fedadam/fedyogi: adaptivity tau
    # Loss weight of each unique row from its multiplicity in the org's file: none|log|sqrt|count.
    "weighting": "none",
    # What picks the threshold and the round: mean per-org validation F1 "unweighted" (each unique
    # vector once), "weighted" (by multiplicity) or "both" (the mean of the two).
    "select": "unweighted",
    "proximal-mu": 0.01,
    "malicious": "",              # robustness runs: this organisation attacks ...
    "attack": "none",             # ... with "labelflip" or "scale"
    "attack-scale": -10.0,
    "dp-noise": -1.0,             # < 0: no differential privacy
    "dp-clip": 1.0,
    # > 0: server-side exponential moving average of the global model with this decay (EMAStrategy);
    # the average is evaluated, selected and saved. 0: off (the raw global model, as before).
    "ema": 0.0,
    "max-rows": 0,                # > 0: each organisation subsamples (tests)
    "seed": 0,
    "out": "",                    # artifact path; empty: none written
    "results": "",                # directory for <name>.json; empty: none written
    "name": "",
}
SERVER_OPTIMIZERS = ("fedavgm", "fedadam", "fedyogi")
# What "auto" means, per kind of strategy. Client-side strategies (FedAvg, FedMedian, ...): each node
# runs AdamW for local-epochs with its own class balance, as before. Server-side optimizers (FedOpt,
# Reddi et al. 2021): each node takes plain SGD step(s) on the globally balanced loss, so the
# example-weighted mean of the updates is a sum of gradients of the pooled objective, and the
# server's Adam turns it into the step (the clients' Adam would normalise each node's update on its
# own and bias the average towards the nodes' own optima).
RECIPES: dict[str, dict[str, Any]] = {
    "client": {"lr": task.LR, "class-balance": "local", "local-steps": 0, "local-optimizer": "adamw",
               "local-momentum": 0.9, "server-lr": 1.0, "server-momentum": 0.9, "server-tau": 1e-3},
    "server": {"lr": 0.05, "class-balance": "global", "local-steps": 1, "local-optimizer": "sgd",
               "local-momentum": 0.0, "server-lr": 2e-3, "server-momentum": 0.9, "server-tau": 1e-6},
}


def recipe(strategy: str) -> dict[str, Any]:
    return RECIPES["server" if strategy in SERVER_OPTIMIZERS else "client"]


def resolve(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with every "auto" (or empty/None) recipe key replaced by the strategy's recipe value."""
    out = dict(cfg)
    rec = recipe(str(out["strategy"]))
    for key, value in rec.items():
        if out.get(key) in (None, "", "auto"):
            out[key] = "none" if key == "class-balance" and not bool(out.get("balanced", True)) else value
    if out["class-balance"] not in ("local", "global", "none"):
        raise ValueError(f"class-balance must be local, global or none, not {out['class-balance']!r}")
    for key in ("lr", "local-momentum", "server-lr", "server-momentum", "server-tau"):
        out[key] = float(out[key])
    out["local-steps"] = int(out["local-steps"])
    return out


STRATEGY_NAMES = ("fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "multikrum", "scaffold", "fedavgm",
                  "fedadam", "fedyogi")

# Set by fl.federated before an in-process simulation (run_simulation takes no run config).
OVERRIDES: dict[str, Any] = {}
# The last run's summary, for the in-process caller.
LAST_RUN: dict[str, Any] = {}

app = ServerApp()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def metrics_from_counts(tp: float, fp: float, fn: float, tn: float) -> dict[str, float | int]:
    n = tp + fp + fn + tn
    return {
        "rows": n, "accuracy": (tp + tn) / n if n else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0, "fpr": fp / (fp + tn) if fp + tn else 0.0,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


class Recorder:
    """``evaluate_metrics_aggr_fn``: per-organisation metrics every round, threshold on validation."""

    def __init__(self, label: str, rounds: int, select: str = "unweighted") -> None:
        if select not in ("unweighted", "weighted", "both"):
            raise ValueError(f"select must be unweighted, weighted or both, not {select!r}")
        self.label, self.rounds, self.select = label, rounds, select
        self.history: list[dict] = []
        self.data: dict[str, dict] = {}
        self.class_weights: tuple[float, float] | None = None
        self.t0 = time.time()

    def __call__(self, records: list[RecordDict], weight_key: str) -> MetricRecord:
        per_org: dict[str, MetricRecord] = {}
        for rd in records:
            m = rd.metric_records["metrics"]
            prov = dict(rd.config_records["data"]) if "data" in rd.config_records else {}
            org = str(prov.get("org", ORGS[int(m["org-id"])] if int(m["org-id"]) >= 0 else len(per_org)))
            per_org[org] = m
            self.data[org] = prov
        order = [o for o in ORGS if o in per_org] + sorted(o for o in per_org if o not in ORGS)
        weighted = all("valw-tp" in per_org[o] for o in order)
        f1_plain = np.mean([task.f1_from_counts(*(per_org[o][f"val-{k}"] for k in ("tp", "fp", "fn")))
                            for o in order], axis=0)
        f1_w = np.mean([task.f1_from_counts(*(per_org[o][f"valw-{k}"] for k in ("tp", "fp", "fn")))
                        for o in order], axis=0) if weighted else f1_plain
        objective = {"unweighted": f1_plain, "weighted": f1_w, "both": (f1_plain + f1_w) / 2}[self.select]
        best_i = np.flatnonzero(objective >= objective.max() - 1e-12)
        i = int(best_i[len(best_i) // 2])  # middle of ties, as task.choose_threshold
        thr = float(task.THRESHOLDS[i])
        orgs: dict[str, dict] = {}
        for o in order:
            m = per_org[o]
            orgs[o] = {
                "val": metrics_from_counts(*(int(m[f"val-{k}"][i]) for k in ("tp", "fp", "fn", "tn"))),
                "test": metrics_from_counts(*(int(m[f"test-{k}"][i]) for k in ("tp", "fp", "fn", "tn"))),
            }
            if weighted:
                orgs[o]["val_weighted"] = metrics_from_counts(*(float(m[f"valw-{k}"][i]) for k in ("tp", "fp", "fn", "tn")))
                orgs[o]["test_weighted"] = metrics_from_counts(*(float(m[f"testw-{k}"][i]) for k in ("tp", "fp", "fn", "tn")))
            orgs[o]["test"]["pr_auc"] = float(m["test-pr-auc"])
        rnd = len(self.history) + 1
        val_mean = float(np.mean([orgs[o]["val"]["f1"] for o in order]))
        test_mean = float(np.mean([orgs[o]["test"]["f1"] for o in order]))
        entry = {"round": rnd, "threshold": thr, "val_f1_mean": val_mean, "test_f1_mean": test_mean,
                 "select_objective": float(objective[i]), "elapsed_s": time.time() - self.t0, "orgs": orgs}
        if weighted:
            entry["val_f1w_mean"] = float(np.mean([orgs[o]["val_weighted"]["f1"] for o in order]))
            entry["test_f1w_mean"] = float(np.mean([orgs[o]["test_weighted"]["f1"] for o in order]))
        self.history.append(entry)
        _log(f"[{self.label}] round {rnd}/{self.rounds} thr {thr:.3f} val F1 mean {val_mean * 100:.2f}"
             + (f" (weighted {entry['val_f1w_mean'] * 100:.2f})" if weighted else "") + " | test F1 "
             + " ".join(f"{o} {orgs[o]['test']['f1'] * 100:.2f}" for o in order)
             + (" | weighted " + " ".join(f"{o} {orgs[o]['test_weighted']['f1'] * 100:.2f}" for o in order)
                if weighted else "")
             + f" ({time.time() - self.t0:.0f}s)")
        return MetricRecord({"val-f1-mean": val_mean, "test-f1-mean": test_mean, "threshold": thr,
                             "select-objective": float(objective[i])})


def cosine(server_round: int, rounds: int) -> float:
    """The cosine decay factor of round ``server_round`` (1 at round 1), as clients and centralized use."""
    return 0.5 * (1 + math.cos(math.pi * (server_round - 1) / max(rounds, 1)))


def _cosine_server_lr(cls: type[Strategy], attr: str, rounds: int) -> type[Strategy]:
    """``cls`` whose server learning rate (attribute ``attr``) follows the cosine decay over rounds.

    With a server-side optimizer the server step is what moves the global model (Adam's step size
    does not depend on the scale of the clients' updates), so the schedule lives here and the
    clients keep a constant learning rate (``lr-schedule = constant`` in their train config).
    """

    class Cosine(cls):  # type: ignore[valid-type,misc]
        def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN202
            if not hasattr(self, "_base_lr"):
                self._base_lr = float(getattr(self, attr))
            setattr(self, attr, self._base_lr * cosine(server_round, rounds))
            return super().aggregate_train(server_round, replies)

    Cosine.__name__ = Cosine.__qualname__ = cls.__name__
    return Cosine


class EMA:
    """Exponential moving average of a model's arrays: ``avg = decay·avg + (1 − decay)·w``.

    The first update copies ``w`` (the average starts at the first aggregated model). Floating
    arrays are averaged in float64 and handed out in their own dtype; other arrays (integer
    buffers) take the newest value.
    """

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), not {decay}")
        self.decay = float(decay)
        self.state: dict[str, np.ndarray] | None = None
        self.dtypes: dict[str, np.dtype] = {}

    def update(self, arrays: ArrayRecord) -> ArrayRecord:
        current = {key: arr.numpy() for key, arr in arrays.items()}
        if self.state is None:
            self.dtypes = {key: a.dtype for key, a in current.items()}
            self.state = {key: a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a.copy()
                          for key, a in current.items()}
        else:
            for key, a in current.items():
                if np.issubdtype(a.dtype, np.floating):
                    avg = self.state[key]
                    avg *= self.decay
                    avg += (1.0 - self.decay) * a
                else:
                    self.state[key] = a.copy()
        return self.arrays()

    def arrays(self) -> ArrayRecord:
        if self.state is None:
            raise RuntimeError("EMA.arrays() before the first update")
        return ArrayRecord(array_dict={key: Array(avg.astype(self.dtypes[key])) for key, avg in self.state.items()})


class EMAStrategy(Strategy):
    """Any strategy plus server-side Polyak averaging of the global model (run-config ``ema``).

    ``aggregate_train`` is the wrapped strategy's (so training, and a server optimizer's state,
    continue from the raw global model); after it the average takes a step towards the new global
    model, and ``configure_evaluate`` sends the *average* to the nodes, so the per-round
    validation/test counts, the round selection and the saved model are the average's.
    """

    def __init__(self, strategy: Strategy, decay: float) -> None:
        self.strategy = strategy
        self.ema = EMA(decay)

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001, ANN201
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN201
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is not None:
            self.ema.update(arrays)
        return arrays, metrics

    def evaluated(self, arrays: ArrayRecord) -> ArrayRecord:
        """The model evaluated in place of the global model ``arrays``: the average once it exists."""
        return self.ema.arrays() if self.ema.state is not None else arrays

    def configure_evaluate(self, server_round, arrays, config, grid):  # noqa: ANN001, ANN201
        return self.strategy.configure_evaluate(server_round, self.evaluated(arrays), config, grid)

    def aggregate_evaluate(self, server_round, replies):  # noqa: ANN001, ANN201
        return self.strategy.aggregate_evaluate(server_round, replies)


def build_strategy(cfg: dict[str, Any], n_nodes: int, recorder: Recorder) -> Strategy:
    name = str(cfg["strategy"])
    common: dict[str, Any] = {
        "fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": n_nodes,
        "min_evaluate_nodes": n_nodes, "min_available_nodes": n_nodes, "evaluate_metrics_aggr_fn": recorder,
    }
    strategy: Strategy
    if name == "fedavg":
        strategy = FedAvg(**common)
    elif name == "fedprox":
        strategy = FedProx(**common, proximal_mu=float(cfg["proximal-mu"]))
    elif name == "fedmedian":
        strategy = FedMedian(**common)
    elif name == "fedtrimmedavg":
        strategy = FedTrimmedAvg(**common, beta=0.25)
    elif name == "scaffold":
        strategy = Scaffold(**common)
    elif name == "fedavgm":
        strategy = _cosine_server_lr(FedAvgM, "server_learning_rate", int(cfg["num-server-rounds"]))(
            **common, server_learning_rate=float(cfg["server-lr"]), server_momentum=float(cfg["server-momentum"]))
    elif name in ("fedadam", "fedyogi"):
        cls = _cosine_server_lr(FedAdam if name == "fedadam" else FedYogi, "eta", int(cfg["num-server-rounds"]))
        strategy = cls(**common, eta=float(cfg["server-lr"]), eta_l=float(cfg["lr"]),
                       beta_1=float(cfg["server-momentum"]), tau=float(cfg["server-tau"]))
    elif name == "multikrum":
        strategy = MultiKrum(**common, num_malicious_nodes=1, num_nodes_to_select=max(n_nodes - 2, 1))
    else:
        raise ValueError(f"unknown strategy {name!r}; one of {STRATEGY_NAMES}")
    if float(cfg["dp-noise"]) >= 0:
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy, noise_multiplier=float(cfg["dp-noise"]), clipping_norm=float(cfg["dp-clip"]),
            num_sampled_clients=n_nodes)
    if float(cfg.get("ema", 0.0) or 0.0) > 0:
        strategy = EMAStrategy(strategy, float(cfg["ema"]))
    return strategy


def global_class_weights(grid: Grid, n_nodes: int, config: dict[str, Any]) -> tuple[float, float]:
    """(negative, positive) loss weights balancing the classes over *all* nodes' training sets.

    One query round: each node answers with its class totals (aggregate statistics, no rows);
    the weights give both classes equal total weight and the pooled rows mean weight 1.
    """
    while len(node_ids := list(grid.get_node_ids())) < n_nodes:
        time.sleep(0.5)
    messages = [Message(content=RecordDict({"config": ConfigRecord(config)}), message_type=MessageType.QUERY,
                        dst_node_id=node) for node in node_ids]
    replies = [r for r in grid.send_and_receive(messages) if r.has_content()]
    if len(replies) < n_nodes:
        raise RuntimeError(f"class-count query: {len(replies)} of {n_nodes} nodes answered")
    pos = sum(float(r.content["metrics"]["weight-pos"]) for r in replies)
    neg = sum(float(r.content["metrics"]["weight-neg"]) for r in replies)
    total = pos + neg
    if pos <= 0 or neg <= 0:
        return 1.0, 1.0
    weights = (total / (2.0 * neg), total / (2.0 * pos))
    _log(f"global class balance from {len(replies)} nodes: {pos / total * 100:.1f} % attacks -> "
         f"weights negative {weights[0]:.3f}, positive {weights[1]:.3f}")
    return weights


def run_label(cfg: dict[str, Any]) -> str:
    """The run's name: the strategy plus every setting that differs from its recipe (see RECIPES)."""
    if cfg.get("name"):
        return str(cfg["name"])
    cfg = resolve(cfg)
    rec = recipe(str(cfg["strategy"]))
    label = str(cfg["strategy"])
    if str(cfg.get("arch", "reference")) != "reference":
        label += f"-{cfg['arch']}"
    if int(cfg.get("num-server-rounds", 20)) != 20:
        label += f"-r{int(cfg['num-server-rounds'])}"
    if int(cfg.get("local-epochs", 2)) != 2 and int(cfg["local-steps"]) == 0:
        label += f"-e{int(cfg['local-epochs'])}"
    if abs(float(cfg["lr"]) - float(rec["lr"])) > 1e-12:
        label += f"-lr{float(cfg['lr']):g}"
    if cfg["class-balance"] != rec["class-balance"]:
        label += {"none": "-unbalanced", "global": "-gbal", "local": "-lbal"}[cfg["class-balance"]]
    if int(cfg["local-steps"]) != int(rec["local-steps"]):
        label += f"-s{int(cfg['local-steps'])}"
    if int(cfg.get("local-batch", 0)) not in (0, task.BATCH):
        label += f"-b{int(cfg['local-batch'])}"
    if cfg["local-optimizer"] != rec["local-optimizer"]:
        label += f"-{cfg['local-optimizer']}"
    if bool(cfg.get("keep-optimizer", False)):
        label += "-keepopt"
    if str(cfg["strategy"]) in SERVER_OPTIMIZERS and float(cfg["server-lr"]) != float(rec["server-lr"]):
        label += f"-slr{float(cfg['server-lr']):g}"
    if str(cfg.get("weighting", "none")) != "none":
        label += f"-w{cfg['weighting']}"
    if str(cfg.get("select", "unweighted")) != "unweighted":
        label += f"-sel{cfg['select']}"
    if cfg.get("attack", "none") != "none" and cfg.get("malicious"):
        label += f"-{cfg['attack']}-{cfg['malicious']}"
    if float(cfg.get("dp-noise", -1)) >= 0:
        label += f"-dp{cfg['dp-noise']:g}"
    if float(cfg.get("ema", 0.0) or 0.0) > 0:
        label += f"-ema{float(cfg['ema']):g}"
    return label


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = resolve({**DEFAULTS, **dict(context.run_config), **OVERRIDES})
    orgs = [o for o in str(cfg["orgs"]).split(",") if o]
    rounds = int(cfg["num-server-rounds"])
    label = run_label(cfg)
    recorder = Recorder(label, rounds, str(cfg.get("select", "unweighted")))
    strategy = build_strategy(cfg, len(orgs), recorder)
    model = task.make_model(int(cfg["seed"]), str(cfg["arch"]))
    # Everything a client needs travels with the message (see fl.client_app).
    shared = {"orgs": ",".join(orgs), "data-dir": str(cfg["data-dir"]), "max-rows": int(cfg["max-rows"]),
              "arch": str(cfg["arch"])}
    balance = str(cfg["class-balance"])
    train_values: dict[str, Any] = {
        **shared, "local-epochs": int(cfg["local-epochs"]), "lr": float(cfg["lr"]), "num-rounds": rounds,
        "seed": int(cfg["seed"]), "balanced": balance == "local", "class-balance": balance,
        "local-steps": int(cfg["local-steps"]), "local-optimizer": str(cfg["local-optimizer"]),
        "local-batch": int(cfg.get("local-batch", 0)),
        "local-momentum": float(cfg["local-momentum"]), "keep-optimizer": bool(cfg["keep-optimizer"]),
        # Server-side optimizers decay the server step instead (see _cosine_server_lr).
        "lr-schedule": "constant" if str(cfg["strategy"]) in SERVER_OPTIMIZERS else "cosine",
        "weighting": str(cfg["weighting"]), "malicious": str(cfg["malicious"]),
        "attack": str(cfg["attack"]), "attack-scale": float(cfg["attack-scale"])}
    if balance == "global":
        weights = global_class_weights(grid, len(orgs), {**shared, "weighting": str(cfg["weighting"])})
        train_values.update({"class-weight-neg": weights[0], "class-weight-pos": weights[1]})
        recorder.class_weights = weights
    train_cfg = ConfigRecord(train_values)
    best: dict[str, Any] = {}

    def keep_best(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        # Called after each round's federated evaluation: keep the global model of the round with
        # the best mean *validation* F1 (model selection on validation, as centralized does per epoch).
        # With ema > 0 the nodes evaluated the moving average, so that is what is kept.
        if isinstance(strategy, EMAStrategy):
            arrays = strategy.evaluated(arrays)
        if recorder.history and recorder.history[-1]["round"] == server_round:
            h = recorder.history[-1]
            score = h.get("select_objective", h["val_f1_mean"])
            if not best or score > best["score"]:
                best.update(round=server_round, score=score, state=arrays.to_torch_state_dict())
        return None

    t0 = time.time()
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=rounds,
                   train_config=train_cfg, evaluate_config=ConfigRecord(shared), evaluate_fn=keep_best)
    wall = time.time() - t0
    model.load_state_dict(best["state"])
    finish(cfg, label, recorder, model, wall, best_round=int(best["round"]))


def finish(cfg: dict[str, Any], label: str, recorder: Recorder, model: Any, wall: float,
           best_round: int) -> dict[str, Any]:
    """Write the artifact and the results JSON; remember the summary for an in-process caller."""
    from fl.model import Artifact, new_version

    last = recorder.history[best_round - 1]
    thr = float(last["threshold"])
    val = {o: m["val"] for o, m in last["orgs"].items()}
    test = {o: m["test"] for o, m in last["orgs"].items()}
    weighted = {split: {o: m[f"{split}_weighted"] for o, m in last["orgs"].items()}
                for split in ("val", "test") if all(f"{split}_weighted" in m for m in last["orgs"].values())}
    summary = {
        "kind": "federated", "name": label, "strategy": str(cfg["strategy"]),
        "rounds": int(cfg["num-server-rounds"]), "local_epochs": int(cfg["local-epochs"]),
        "ema": float(cfg.get("ema", 0.0) or 0.0),
        "config": {k: v for k, v in cfg.items() if k not in ("out", "results")},
        "threshold": thr, "val": val, "test": test,
        **{f"{split}_weighted": m for split, m in weighted.items()}, "history": recorder.history, "data": recorder.data,
        "wall_s": wall, "best_round": best_round, "class_weights": recorder.class_weights,
        "final_round_test": {o: m["test"] for o, m in recorder.history[-1]["orgs"].items()},
    }
    _log(f"[{label}] done in {wall:.0f}s; round {best_round} has the best validation F1; its test F1 "
         + " ".join(f"{o} {m['f1'] * 100:.2f}" for o, m in test.items())
         + ("; weighted " + " ".join(f"{o} {m['f1'] * 100:.2f}" for o, m in weighted["test"].items())
            if "test" in weighted else ""))
    if cfg.get("out"):
        from fl.runner import _clean

        prov = {
            "version": new_version(str(cfg["strategy"])), "strategy": str(cfg["strategy"]),
            "rounds": int(cfg["num-server-rounds"]), "local_epochs": int(cfg["local-epochs"]),
            "selected_round": best_round, "ema": summary["ema"],
            "evaluated_model": "exponential moving average of the global model" if summary["ema"] > 0
            else "global model", "data": [recorder.data.get(o, {"org": o}) for o in test],
            "threshold_from": "validation splits (mean per-organisation F1, from counts sent by the nodes)",
            "metrics": _clean({"val": val, "test": test}), "wall_s": round(wall, 1),
            "config": _clean(summary["config"]),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        out = Artifact(model, thr, prov).save(Path(str(cfg["out"])))
        summary["artifact"], summary["version"] = str(out), prov["version"]
        _log(f"[{label}] wrote {out} (threshold {thr:.4f}, version {prov['version']})")
    if cfg.get("results"):
        from fl.runner import save_results

        path = save_results(str(cfg["results"]), label, summary)
        _log(f"[{label}] results in {path}")
    LAST_RUN.clear()
    LAST_RUN.update(summary)
    LAST_RUN["_model"] = model  # in-process callers (leave-one-out) evaluate it further
    return summary
