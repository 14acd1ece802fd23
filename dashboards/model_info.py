"""The serving model's version and training metrics, read from the artifact's provenance.

Loading the artifact imports torch (seconds, hundreds of MB), so it happens once per process in
a background thread and is cached by file modification time; a missing or unreadable file is
reported on the page, never raised into a session.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

_cache: dict[str, Any] = {}
_lock = threading.Lock()


def read_provenance(path: str | Path) -> dict[str, Any]:
    """``{"path", "ok", "error"?, "version", "threshold", "provenance"}`` for the artifact at ``path``."""
    path = Path(path)
    out: dict[str, Any] = {"path": str(path), "ok": False, "version": "", "threshold": None, "provenance": {}}
    if not path.is_file():
        out["error"] = "model artifact not found"
        return out
    try:
        from fl.model import load_artifact

        art = load_artifact(path)
    except Exception as exc:  # noqa: BLE001 - a bad artifact must not break the dashboard
        out["error"] = f"cannot read artifact: {type(exc).__name__}: {str(exc)[:200]}"
        return out
    out.update(ok=True, version=art.version, threshold=art.threshold, provenance=dict(art.provenance))
    return out


def model_info(path: str | Path) -> dict[str, Any] | None:
    """Cached provenance, or ``None`` while the first load runs in the background."""
    key = str(path)
    try:
        mtime = os.stat(key).st_mtime
    except OSError:
        mtime = None
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        if hit is not None and hit[0] == "loading":
            return None
        _cache[key] = ("loading", None)

    def load() -> None:
        info = read_provenance(key)
        with _lock:
            _cache[key] = (mtime, info)

    threading.Thread(target=load, name="phoenix-model-info", daemon=True).start()
    return None


METRIC_COLUMNS = ("rows", "accuracy", "precision", "recall", "f1", "fpr")


def metrics_rows(prov: dict[str, Any]) -> list[dict[str, Any]]:
    """``metrics.<split>.<organisation>.<metric>`` as one row per (split, organisation)."""
    rows = []
    metrics = prov.get("metrics")
    if not isinstance(metrics, dict):
        return rows
    for split, per_org in metrics.items():
        if not isinstance(per_org, dict):
            continue
        for org, m in per_org.items():
            if isinstance(m, dict) and any(c in m for c in METRIC_COLUMNS):
                rows.append({"split": str(split), "organisation": str(org),
                             **{c: m.get(c) for c in METRIC_COLUMNS}})
    return rows


def flatten_metrics(prov: dict[str, Any], prefix: str = "", skip: tuple[str, ...] = ("metrics",),
                    max_len: int = 160) -> list[tuple[str, str]]:
    """Nested provenance as (name, value) rows for a table (``skip``: keys shown elsewhere)."""
    rows: list[tuple[str, str]] = []
    for k, v in prov.items():
        name = f"{prefix}{k}"
        if not prefix and k in skip:
            continue
        if isinstance(v, dict):
            rows.extend(flatten_metrics(v, name + ".", skip, max_len))
        elif isinstance(v, float):
            rows.append((name, f"{v:.4f}"))
        else:
            text = str(v)
            rows.append((name, text if len(text) <= max_len else text[: max_len - 1] + "…"))
    return rows
