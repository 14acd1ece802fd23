"""``phoenix train --strategy <federated>``: the Flower apps of ``fl/`` in Flower's simulation runtime.

The ServerApp (:mod:`fl.server_app`) and ClientApp (:mod:`fl.client_app`) are the very objects
``flwr run .`` and real SuperNodes run; here they are started in-process with
:func:`flwr.simulation.run_simulation` (Ray backend, one virtual SuperNode per organisation,
one CPU each) because that call returns the trained model to this process and needs no SuperLink.
``run_simulation`` takes no run config, so the settings go to the ServerApp through
:data:`fl.server_app.OVERRIDES`, and from there to clients inside each message.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from phoenix.config import DEFAULT_MODEL

Progress = Callable[[str], None]


def simulate(cfg: dict[str, Any], *, cpus: int = 2, quiet: bool = True) -> dict[str, Any]:
    """Run one federation in-process; returns :data:`fl.server_app.LAST_RUN` (summary + ``_model``)."""
    from flwr.simulation import run_simulation

    from fl import client_app, server_app
    from phoenix.config import PROJECT_ROOT

    orgs = [o for o in str(cfg.get("orgs", "bot,ton,unsw,cse")).split(",") if o]
    server_app.OVERRIDES.clear()
    server_app.OVERRIDES.update(cfg)
    server_app.LAST_RUN.clear()
    if quiet:
        # Flower logs every message exchange at INFO; our per-round line is the progress report.
        logging.getLogger("flwr").setLevel(logging.WARNING)
    # Ray workers must import the project packages however this process was started.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                             "logging_level": logging.ERROR}}
    run_simulation(server_app=server_app.app, client_app=client_app.app, num_supernodes=len(orgs),
                   backend_config=backend)
    if not server_app.LAST_RUN:
        raise RuntimeError("the federated run produced no result (see the Flower log above)")
    return dict(server_app.LAST_RUN)


def _auto(value: Any) -> Any:
    return "auto" if value is None else value


def config_from_args(args: argparse.Namespace, out: str, results: str) -> dict[str, Any]:
    return {
        "strategy": args.strategy, "num-server-rounds": args.rounds, "local-epochs": args.local_epochs,
        "data-dir": os.path.abspath(args.data), "orgs": args.orgs, "proximal-mu": args.proximal_mu, "lr": _auto(args.lr),
        "balanced": not getattr(args, "unbalanced", False),
        # None (flag not given) -> "auto": the strategy's recipe (fl.server_app.RECIPES).
        **{key: _auto(getattr(args, attr, None)) for key, attr in (
            ("class-balance", "class_balance"), ("local-steps", "local_steps"), ("local-optimizer", "local_optimizer"),
            ("local-momentum", "local_momentum"), ("server-lr", "server_lr"),
            ("server-momentum", "server_momentum"), ("server-tau", "server_tau"))},
        "keep-optimizer": getattr(args, "keep_optimizer", False), "local-batch": getattr(args, "local_batch", 0),
        "weighting": getattr(args, "weighting", "none"), "select": getattr(args, "select", "unweighted"),
        "malicious": args.malicious, "attack": args.attack, "dp-noise": args.dp_noise, "dp-clip": args.dp_clip,
        "ema": float(getattr(args, "ema", 0.0) or 0.0),
        "max-rows": args.max_rows, "seed": args.seed, "arch": getattr(args, "arch", "reference"),
        "out": out, "results": results, "name": args.name,
    }


def run_from_args(args: argparse.Namespace, log: Progress) -> int:
    from fl import baselines, data, server_app
    from fl.runner import save_results

    out = args.out if args.out is not None else str(DEFAULT_MODEL)
    if args.holdout:
        # Leave-one-organisation-out: the held-out organisation takes no part in training.
        args.orgs = ",".join(o for o in args.orgs.split(",") if o and o != args.holdout)
        args.name = args.name or f"{args.strategy}-without-{args.holdout}"
        out = args.out or ""
    t0 = time.time()
    steps = args.local_steps if args.local_steps is not None else server_app.recipe(args.strategy)["local-steps"]
    work = f"{steps} local step{'s' * (steps != 1)}" if steps else f"{args.local_epochs} local epochs"
    log(f"federated {args.strategy}: {args.rounds} rounds x {work}, "
        f"organisations {args.orgs} (Flower simulation runtime, in-process)")
    summary = simulate(config_from_args(args, out, args.results))
    total = time.time() - t0
    log(f"wall time {total:.0f}s (federation {summary['wall_s']:.0f}s)")
    if args.holdout and args.results:
        held = data.load_orgs(args.data, (args.holdout,), max_rows=args.max_rows)
        m = baselines.evaluate_orgs(summary["_model"], held, float(summary["threshold"]), "test")
        log(f"held-out {args.holdout}: test F1 {m[args.holdout]['f1'] * 100:.2f} "
            f"PR-AUC {m[args.holdout]['pr_auc'] * 100:.2f}")
        summary["holdout"] = {"org": args.holdout, **m[args.holdout]}
    if args.results:
        summary["wall_total_s"] = total
        save_results(args.results, summary["name"], {k: v for k, v in summary.items() if not k.startswith("_")})
    return 0
