"""How each candidate network does on real traffic: ``python -m fl.capture_check``.

NF-v2 test F1 measures a network on nProbe's flow records; serving feeds it our meter's flows. A
network can gain on the first and lose on the second (docs/training.md, "Input encoding and periodic
features"), so candidates are also scanned here: every capture in ``../shared/data/pcaps`` through
the same meter and context detectors as ``phoenix scan``, once per artifact. The counts land in
``docs/results/capture-check.json``, which the report tabulates. Not a selection step: the captures
are few and were never split; this shows what a gateway would see.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from phoenix.config import DEFAULT_MODEL, PROJECT_ROOT

CAPTURES = PROJECT_ROOT.parent / "shared" / "data" / "pcaps"
CANDIDATES = PROJECT_ROOT / "runs" / "candidates"
# Name → artifact; those that do not exist (candidates are git-ignored) are skipped.
DEFAULT_MODELS = {
    "shipped": DEFAULT_MODEL,
    "centralized": CANDIDATES / "centralized.pt",
    "centralized-periodic": CANDIDATES / "centralized-periodic.pt",
    "fedadam-periodic-r2000": CANDIDATES / "fedadam-periodic-r2000.pt",
}


def capture_files(directory: str | Path) -> list[str]:
    d = Path(directory)
    return sorted(str(p) for p in [*d.glob("*.pcap"), *d.glob("*.pcapng")])


def check(models: dict[str, str | Path], files: list[str]) -> dict:
    """Per model: version, architecture and ``phoenix scan``'s per-file counts."""
    from capture.commands import scan
    from fl.model import load_artifact

    out: dict = {"kind": "capture-check", "captures": [Path(f).name for f in files], "models": {}}
    for name, path in models.items():
        art = load_artifact(path)
        doc = scan(files, model=str(path))
        shown = Path(path).resolve()
        shown = shown.relative_to(PROJECT_ROOT) if shown.is_relative_to(PROJECT_ROOT) else shown
        out["models"][name] = {"artifact": str(shown), "version": art.version, "threshold": art.threshold,
                               "architecture": art.model.architecture(), "per_file": doc["per_file"]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pcaps", default=str(CAPTURES), help="directory of captures (default the shared ones)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="artifact to scan with (repeatable; default: the shipped model and the candidates present)")
    p.add_argument("--results", default="docs/results", help="writes capture-check.json here")
    args = p.parse_args(argv)
    models = dict(m.split("=", 1) for m in args.model) if args.model else \
        {k: v for k, v in DEFAULT_MODELS.items() if Path(v).exists()}
    files = capture_files(args.pcaps)
    if not files:
        print(f"no captures in {args.pcaps}", file=sys.stderr)
        return 2
    t0 = time.time()
    doc = check(models, files)
    path = Path(args.results) / "capture-check.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    for name, m in doc["models"].items():
        benign = [v for f, v in m["per_file"].items() if f.startswith("benign")]
        print(f"{name} ({m['version']}): benign flows flagged by the model "
              f"{sum(v['by_model'] for v in benign)}/{sum(v['flows'] for v in benign)}", file=sys.stderr)
    print(f"{len(files)} captures × {len(models)} models in {time.time() - t0:.0f}s; wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
