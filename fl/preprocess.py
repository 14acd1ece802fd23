"""The one input transform, shared by every organisation, by training and by serving.

The reference fitted a MinMax scaler per organisation and a different one for serving, and its
``*_SECOND_BYTES`` columns (values up to 1e46, an upstream concatenation artefact) squashed every
other value of those features to ~0. This transform needs no statistics at all, so federated
parties agree on it without sharing a single row, and it is bounded whatever arrives:

    z = log1p(clip(x, 0, CAP)) / log1p(CAP)        in [0, 1]

Counters spanning 0 to 1e9+ become evenly spread; 1e46 lands on 1.0 like any value ≥ CAP.
NaN becomes 0 here only as a last line of defence: the dataflow dead-letters non-finite rows
before they reach the model.
"""

from __future__ import annotations

import numpy as np

NAME = "log1p_cap"
VERSION = 1
CAP = float(2**40)  # ~1.1e12: above any real byte, packet or millisecond counter in NF-v2
_SCALE = float(np.log1p(CAP))


def spec() -> dict:
    """What the model artifact records about this transform."""
    return {"name": NAME, "version": VERSION, "cap": CAP}


def check_spec(recorded: dict) -> None:
    """Refuse an artifact trained with a transform this build does not apply."""
    if recorded != spec():
        raise ValueError(f"artifact preprocessing {recorded} differs from this build's {spec()}")


def transform(x: np.ndarray) -> np.ndarray:
    """Raw NF-v2 feature matrix (n, 39), any numeric dtype → float32 model input."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=CAP, neginf=0.0)
    np.clip(x, 0.0, CAP, out=x)
    np.log1p(x, out=x)
    x *= 1.0 / _SCALE
    return x.astype(np.float32)
