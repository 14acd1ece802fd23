"""Subcommands of ``phoenix`` that belong to this area: ``train`` and ``evaluate``."""

from __future__ import annotations

import argparse
import sys

STRATEGIES = ("fedavg", "fedprox", "fedmedian", "fedtrimmedavg", "multikrum", "scaffold", "fedavgm", "fedadam",
              "fedyogi", "centralized", "local")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands to the ``phoenix`` parser."""
    from fl.data import DEFAULT_DATA_DIR

    p = sub.add_parser(
        "train", help="train the model (federated with Flower, or a baseline) and write the artifact",
        description="Train the PhoenixFL MLP. Federated strategies run the Flower ServerApp/ClientApp of fl/ "
        "in-process with Flower's simulation runtime (one virtual SuperNode per organisation); "
        "'centralized' pools all organisations' training rows (the upper bound); 'local' trains one model "
        "per organisation and writes the cross matrix. The artifact's threshold is chosen on validation data.",
    )
    # Defaults = the shipped model: FedAdam (server-side Adam) over nodes taking one plain SGD step a
    # round on the globally class-balanced loss, 2000 rounds (docs/training.md; with the first input
    # encoding --ema 0.99 scored higher on validation but flagged most benign flows of real captures).
    # Settings left out take the strategy's recipe (fl.server_app.RECIPES): server-side optimizers
    # (fedadam, fedyogi, fedavgm) that recipe, the other strategies AdamW for --local-epochs with a
    # per-node class balance, as before.
    p.add_argument("--strategy", choices=STRATEGIES, default="fedadam")
    p.add_argument("--rounds", type=int, default=2000, help="federated rounds (default 2000)")
    p.add_argument("--arch", choices=("reference", "periodic"), default="reference",
                   help="network (fl.model.ARCHITECTURES): reference (default, shipped) or periodic (periodic "
                        "features of the scaled inputs; better on NF-v2 test splits, worse on real captures)")
    p.add_argument("--local-epochs", type=int, default=2,
                   help="local epochs per round when no --local-steps apply (default 2)")
    p.add_argument("--epochs", type=int, default=60, help="epochs for centralized/local baselines (default 60)")
    p.add_argument("--data", default=str(DEFAULT_DATA_DIR),
                   help="directory holding the NF-v2 files of the organisations (default ../shared/data/nf)")
    p.add_argument("--orgs", default="bot,ton,unsw,cse", help="organisations taking part (comma separated)")
    p.add_argument("--out", default=None,
                   help="artifact path (default models/phoenix.pt for centralized and federated runs; "
                        "'' writes none; 'local' writes none)")
    p.add_argument("--results", default="docs/results", help="where the run's metrics JSON and plots go")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate of the nodes / centralized (default 1e-3 for AdamW; 0.05 for the "
                        "nodes' SGD under fedadam/fedyogi/fedavgm, constant: the server decays its own rate)")
    p.add_argument("--unbalanced", action="store_true",
                   help="federated: plain local loss instead of the per-organisation class-balanced one")
    p.add_argument("--class-balance", choices=("local", "global", "none"), default=None,
                   help="federated loss class balance: 'local' (each node balances its own classes), 'global' "
                        "(nodes report class counts once, the server sends pooled class weights), 'none' "
                        "(default: global for fedadam/fedyogi/fedavgm, local otherwise; --unbalanced = none)")
    p.add_argument("--local-steps", type=int, default=None,
                   help="federated: batches per round instead of --local-epochs (0 = use epochs; "
                        "default 1 for fedadam/fedyogi/fedavgm, 0 otherwise)")
    p.add_argument("--local-batch", type=int, default=0,
                   help="federated: rows per local batch (default 0 = 512, the centralized batch)")
    p.add_argument("--local-optimizer", choices=("adamw", "sgd"), default=None,
                   help="federated: node optimizer (default sgd for fedadam/fedyogi/fedavgm, adamw otherwise)")
    p.add_argument("--local-momentum", type=float, default=None,
                   help="momentum of --local-optimizer sgd (default 0 for server-side optimizers, else 0.9)")
    p.add_argument("--keep-optimizer", action="store_true",
                   help="federated: each node keeps its optimizer state (Adam moments) across rounds "
                        "in its Flower Context.state instead of starting a fresh optimizer every round")
    p.add_argument("--server-lr", type=float, default=None,
                   help="fedavgm: server learning rate; fedadam/fedyogi: eta; cosine decay over the rounds "
                        "(default 0.002)")
    p.add_argument("--server-momentum", type=float, default=None,
                   help="fedavgm: server momentum; fedadam/fedyogi: beta_1 (default 0.9)")
    p.add_argument("--server-tau", type=float, default=None, help="fedadam/fedyogi: tau (default 1e-6)")
    p.add_argument("--weighting", choices=("none", "log", "sqrt", "count"), default="none",
                   help="loss weight of each unique row from its multiplicity in the org's file "
                        "(none | log: 1+log(count) | sqrt | count)")
    p.add_argument("--select", choices=("unweighted", "weighted", "both"), default="unweighted",
                   help="validation F1 that picks threshold and round: each unique row once, "
                        "multiplicity-weighted, or the mean of both")
    p.add_argument("--proximal-mu", type=float, default=0.01, help="FedProx mu (default 0.01)")
    p.add_argument("--malicious", default="", help="organisation that attacks (robustness experiments)")
    p.add_argument("--attack", choices=("none", "labelflip", "scale"), default="none")
    p.add_argument("--dp-noise", type=float, default=-1.0,
                   help="server-side DP with fixed clipping at this noise multiplier (negative: off)")
    p.add_argument("--dp-clip", type=float, default=1.0, help="DP clipping norm of each update")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="federated: server-side exponential moving average (Polyak averaging) of the global "
                        "model with this decay, e.g. 0.99; training continues from the raw global model, the "
                        "average is what the nodes evaluate, what validation selects and what is saved "
                        "(default 0 = off)")
    p.add_argument("--holdout", default="",
                   help="leave-one-organisation-out: federate the others, then test on this one")
    p.add_argument("--max-rows", type=int, default=0, help="subsample each organisation (tests; 0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="", help="run name for the results file (default: derived)")
    p.add_argument("--report", action="store_true",
                   help="instead of training: rebuild docs/training.md from the results directory")
    p.add_argument("--shipped-model", default=None,
                   help="with --report: the artifact reported as shipped (default models/phoenix.pt)")
    p.add_argument("--central-model", default=None,
                   help="with --report: the centralized artifact (default runs/candidates/centralized.pt)")
    p.set_defaults(handler=_train)

    e = sub.add_parser(
        "evaluate", help="metrics of a model artifact on labeled NF-v2 files",
        description="Score labeled NF-v2 Parquet/CSV files with an artifact at its own threshold. "
        "Files are used whole (no de-duplication, no split).",
    )
    e.add_argument("--model", default=None, help="artifact (default models/phoenix.pt)")
    e.add_argument("--data", nargs="+", required=True, metavar="FILE")
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")
    e.add_argument("--device", default="cpu")
    e.set_defaults(handler=_evaluate)


def _log(msg: str) -> None:
    # Progress goes to stderr: stdout stays free for --json documents.
    print(msg, file=sys.stderr, flush=True)


def _train(args: argparse.Namespace) -> int:
    if args.report:
        from fl import report

        path = report.write_report(args.results, shipped_model=args.shipped_model,
                                   central_model=args.central_model)
        _log(f"wrote {path}")
        return 0
    from fl import runner

    return runner.run_from_args(args, _log)


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fl.data import MissingLabelError, read_labeled
    from fl.model import Scorer, load_artifact
    from fl.task import metrics
    from phoenix.cli import emit_json
    from phoenix.config import DEFAULT_MODEL

    model_path = args.model or str(DEFAULT_MODEL)
    artifact = load_artifact(model_path)
    scorer = Scorer(artifact, device=args.device)
    results: dict[str, dict] = {}
    for file in args.data:
        try:
            x, y = read_labeled(file)
        except (MissingLabelError, FileNotFoundError, ValueError) as exc:
            print(f"phoenix evaluate: {exc}", file=sys.stderr)
            return 2
        m = metrics(y, scorer.scores(x), artifact.threshold)
        results[Path(file).name.split(".")[0]] = {k: (None if isinstance(v, float) and v != v else v)
                                                 for k, v in m.items()}
    if args.json:
        emit_json(results)
        return 0
    print(f"model {model_path} (version {artifact.version}, threshold {artifact.threshold:.4f})")
    cols = ("rows", "accuracy", "precision", "recall", "f1", "fpr", "pr_auc")
    print(f"{'file':32s}" + "".join(f"{c:>11s}" for c in cols))
    for name, m in results.items():
        cells = [f"{m[c]:>11d}" if c == "rows" else (f"{m[c] * 100:>10.2f}%" if m[c] is not None else f"{'n/a':>11s}")
                 for c in cols]
        print(f"{name:32s}" + "".join(cells))
    return 0
