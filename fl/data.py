"""Per-organisation data: load NF-v2 files, drop duplicates, split, preprocess.

Every organisation prepares its own data alone, with nothing learned from anyone else's rows:

1. read its Parquet or CSV file (the UQ samples, or a user's full download);
2. drop exact duplicates of (39 features + Label) *before* splitting: in the BoT-IoT sample
   ~93 % of rows repeat another row, and the reference split after the fact, so the same
   vectors sat in train and test and inflated its scores;
3. split deterministically and stratified by label into train / validation / test;
4. apply :func:`fl.preprocess.transform`, the data-independent transform that serving applies
   too, so there is no scaler to fit and nothing to share.

The split is keyed by a seed, so a client in a simulation, a SuperNode on its own, and the
report all see the same rows without exchanging them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from fl import preprocess
from phoenix.config import SHARED_DATA
from phoenix.schema import FEATURES, LABEL

DEFAULT_DATA_DIR = SHARED_DATA / "nf"

# The four organisations, in partition-id order (a simulated node with partition-id i is ORGS[i]).
ORGS: tuple[str, ...] = ("bot", "ton", "unsw", "cse")
ORG_FILES: dict[str, str] = {
    "bot": "NF-BoT-IoT-v2",
    "ton": "NF-ToN-IoT-v2",
    "unsw": "NF-UNSW-NB15-v2",
    "cse": "NF-CSE-CIC-IDS2018-v2",
}
ORG_TITLES: dict[str, str] = {"bot": "BoT-IoT", "ton": "ToN-IoT", "unsw": "UNSW-NB15", "cse": "CSE-CIC-IDS2018"}

VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
SPLIT_SEED = 42


class MissingLabelError(ValueError):
    """A file without the ``Label`` column cannot be trained on or evaluated."""


@dataclass
class OrgData:
    """One organisation's prepared data. ``x_*`` are already transformed (float32)."""

    name: str
    path: str
    digest: str
    rows_raw: int
    rows_unique: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    # Multiplicity of each unique row: how often its (features, label) occurs in the raw file.
    # Traffic repeats (a scan or flood sends one vector thousands of times): the count keeps that
    # signal after de-duplication without leaking rows between splits. None: all ones.
    w_train: np.ndarray | None = None
    w_val: np.ndarray | None = None
    w_test: np.ndarray | None = None

    def counts(self, split: str) -> np.ndarray:
        w = getattr(self, f"w_{split}")
        return np.ones(len(getattr(self, f"y_{split}")), dtype=np.float32) if w is None else w

    def provenance(self) -> dict:
        return {
            "org": self.name, "file": Path(self.path).name, "sha256_16": self.digest,
            "rows": self.rows_raw, "unique_rows": self.rows_unique,
            "train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test),
            "attack_share": round(float(np.concatenate([self.y_train, self.y_val, self.y_test]).mean()), 4),
        }


def read_table(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read an NF-v2 Parquet or CSV file."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path, columns=columns)
    if path.suffix.lower() in (".csv", ".gz"):
        return pd.read_csv(path, usecols=columns)
    raise ValueError(f"{path}: expected a .parquet or .csv file")


def read_labeled(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Raw (n, 39) float64 features in model order and the int labels. Refuses unlabeled files."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
    else:
        names = list(pd.read_csv(path, nrows=0).columns)
    if LABEL not in names:
        raise MissingLabelError(f"{path}: no '{LABEL}' column, so it cannot be evaluated "
                                "(unlabeled files such as the replay CSV are for `phoenix replay`)")
    missing = [f for f in FEATURES if f not in names]
    if missing:
        raise ValueError(f"{path}: {len(missing)} of the 39 NF-v2 features are missing (first: {missing[0]})")
    df = read_table(path, columns=[*FEATURES, LABEL])
    return df[list(FEATURES)].to_numpy(dtype=np.float64), df[LABEL].to_numpy(dtype=np.int64)


def org_files(data_dir: str | Path = DEFAULT_DATA_DIR, orgs: tuple[str, ...] = ORGS) -> dict[str, Path]:
    """Map each organisation to its file in ``data_dir`` (Parquet preferred over CSV)."""
    data_dir = Path(data_dir)
    found: dict[str, Path] = {}
    for org in orgs:
        stem = ORG_FILES[org]
        for suffix in (".parquet", ".csv", ".csv.gz"):
            candidate = data_dir / f"{stem}{suffix}"
            if candidate.exists():
                found[org] = candidate
                break
        else:
            raise FileNotFoundError(f"{data_dir}: no {stem}.parquet or .csv for organisation '{org}'")
    return found


def split_indices(y: np.ndarray, seed: int = SPLIT_SEED, val: float = VAL_FRACTION,
                  test: float = TEST_FRACTION) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic stratified train/val/test index split."""
    idx = np.arange(len(y))
    # Stratify only when both classes have enough rows to land in every split.
    strat = y if np.bincount(y, minlength=2).min() >= 3 else None
    rest, test_idx = train_test_split(idx, test_size=test, random_state=seed, stratify=strat)
    strat_rest = y[rest] if strat is not None else None
    train_idx, val_idx = train_test_split(rest, test_size=val / (1.0 - test), random_state=seed + 1,
                                          stratify=strat_rest)
    return np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)


def dedup(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop exact duplicate (features, label) rows, keeping first occurrences in file order."""
    x_u, y_u, _ = dedup_counts(x, y)
    return x_u, y_u


def dedup_counts(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`dedup` plus each kept row's multiplicity (its number of occurrences in the input).

    The key is (features, label): a vector seen with both labels stays twice, each variant with
    its own count.
    """
    frame = pd.DataFrame(x)
    frame["__y"] = y
    codes = frame.groupby(list(frame.columns), sort=False, dropna=False).ngroup().to_numpy()
    keep = ~frame.duplicated().to_numpy()
    counts = np.bincount(codes)[codes[keep]].astype(np.float32)
    return x[keep], y[keep], counts


@functools.lru_cache(maxsize=16)
def _load_cached(path: str, seed: int, max_rows: int) -> OrgData:
    from fl.model import file_digest

    x_raw, y = read_labeled(path)
    rows_raw = len(y)
    x_raw, y, mult = dedup_counts(x_raw, y)
    if max_rows and len(y) > max_rows:
        # A stratified subsample for fast tests; taken after dedup so it stays leak-free.
        keep, _ = train_test_split(np.arange(len(y)), train_size=max_rows, random_state=seed, stratify=y)
        keep = np.sort(keep)
        x_raw, y, mult = x_raw[keep], y[keep], mult[keep]
    tr, va, te = split_indices(y, seed)
    x = preprocess.transform(x_raw)
    name = next((o for o, stem in ORG_FILES.items() if Path(path).name.startswith(stem + ".")), Path(path).stem)
    return OrgData(name, path, file_digest(path), rows_raw, len(y), x[tr], y[tr].astype(np.float32),
                   x[va], y[va].astype(np.float32), x[te], y[te].astype(np.float32),
                   mult[tr], mult[va], mult[te])


def load_org(path: str | Path, seed: int = SPLIT_SEED, max_rows: int = 0) -> OrgData:
    """Prepare one organisation's file (cached per process: a simulation reuses it every round)."""
    return _load_cached(str(Path(path).resolve()), seed, int(max_rows))


def load_orgs(data_dir: str | Path = DEFAULT_DATA_DIR, orgs: tuple[str, ...] = ORGS, seed: int = SPLIT_SEED,
              max_rows: int = 0) -> dict[str, OrgData]:
    """Prepare every organisation's data (for centralized/local baselines and the report)."""
    return {org: load_org(p, seed, max_rows) for org, p in org_files(data_dir, orgs).items()}
