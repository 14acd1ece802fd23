"""The reference MLP and the self-describing model artifact.

Architecture (``reference``, shipped): the reference's hidden layers (REFERENCE.md: 512 → 256 →
128 → 96 → 48 → 1, each Linear → LayerNorm → ReLU, Xavier-uniform init, one logit) over the 39
NF-v2 features as :mod:`fl.preprocess` encodes them (110 inputs instead of the reference's 39
scaled ones). ``periodic`` adds fixed periodic features of the 39 scaled columns
(:class:`PeriodicFeatures`), a 256-wide first layer and dropout: better on NF-v2 test splits, worse
on real captures, so it is an experiment (``phoenix train --arch periodic``), not the default.

The artifact is one ``torch.save`` file of plain tensors and built-in types, loaded with
``weights_only=True`` so opening a model file cannot run code. It carries everything serving
needs: architecture, weights, feature order, preprocessing, decision threshold, provenance.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fl import preprocess
from phoenix.schema import FEATURES, N_FEATURES

ARTIFACT_FORMAT = "phoenixfl.model/1"
HIDDEN = (512, 256, 128, 96, 48)
# Cycles of sin and cos over the [0, 1] range of each scaled column. 1024 cycles resolve a 3 %
# change of a raw value (TCP window 64,240 vs 65,535, packet length 1,460 vs 1,500), which the log
# scale alone puts 0.0007 apart.
PERIODIC = (16, 64, 256, 1024)
# Named architectures (``phoenix train --arch``). ``periodic``: the first layer narrowed to 256
# because at 512 its 422 inputs scored 28 % fewer records/s than ``reference`` (ad-hoc timing of
# Scorer, one thread, batch 8192, interleaved runs: 92,000 against 127,000; at 256: 137,000);
# dropout because the periodic features let the network memorise exact values. On the NF-v2 test splits it
# reaches ToN-IoT F1 97, but on real captures it misses the SSH brute force that ``reference``
# flags, and flags more benign flows (docs/training.md, "Input encoding and periodic features").
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "reference": {"hidden": HIDDEN, "periodic": (), "dropout": 0.0},
    "periodic": {"hidden": (256, 256, 128, 96, 48), "periodic": PERIODIC, "dropout": 0.1},
}


class PeriodicFeatures(nn.Module):
    """``x`` followed by sin(2πkv) and cos(2πkv) of its first ``n_scaled`` columns v, k in ``freqs``.

    Fixed frequencies, not learned and not in the state dict: nothing of them travels in a
    federated round, and the artifact records them as architecture. Computed in float32 even
    under bf16 autocast (elementwise ops keep the input's type), where 2π·1024·v needs the bits.
    """

    def __init__(self, freqs: tuple[float, ...] = PERIODIC, n_scaled: int = N_FEATURES) -> None:
        super().__init__()
        self.freqs = tuple(float(f) for f in freqs)
        self.n_scaled = n_scaled
        self.register_buffer("omega", 2 * np.pi * torch.tensor(self.freqs, dtype=torch.float32),
                             persistent=False)

    @property
    def extra(self) -> int:
        return 2 * self.n_scaled * len(self.freqs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.freqs:
            return x
        z = (x[:, :self.n_scaled, None] * self.omega).flatten(1)
        return torch.cat([x, torch.sin(z), torch.cos(z)], dim=1)


class PhoenixMLP(nn.Module):
    def __init__(self, n_inputs: int = preprocess.WIDTH, hidden: tuple[int, ...] = HIDDEN,
                 periodic: tuple[float, ...] = (), dropout: float = 0.0) -> None:
        super().__init__()
        self.n_inputs = n_inputs
        self.hidden = tuple(hidden)
        self.dropout = float(dropout)
        self.periodic = PeriodicFeatures(periodic)
        layers: list[nn.Module] = []
        width = n_inputs + self.periodic.extra
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU()]
            if self.dropout:
                layers.append(nn.Dropout(self.dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # The encoded codes (flag bits, one-hots) start with zero weights: a code no training row
        # carries (NTP, mDNS and CoAP are absent from NF-v2) then adds nothing to a score, instead
        # of a random offset that would decide the verdict of every such flow at serving time.
        with torch.no_grad():
            self.net[0].weight[:, N_FEATURES:n_inputs] = 0.0

    def architecture(self) -> dict[str, Any]:
        return {"name": "mlp", "inputs": self.n_inputs, "hidden": list(self.hidden),
                "periodic": list(self.periodic.freqs), "dropout": self.dropout, "norm": "layernorm",
                "activation": "relu", "output": "logit"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.periodic(x)).squeeze(-1)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@dataclass
class Artifact:
    """A trained model plus what is needed to serve it correctly."""

    model: PhoenixMLP
    threshold: float = 0.5
    provenance: dict[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] = FEATURES

    @property
    def version(self) -> str:
        return str(self.provenance.get("version", "unversioned"))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        doc = {
            "format": ARTIFACT_FORMAT,
            "architecture": self.model.architecture(),
            "state_dict": state,
            "features": list(self.features),
            "preprocessing": preprocess.spec(),
            "threshold": float(self.threshold),
            "provenance": self.provenance,
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(doc, tmp)
        tmp.replace(path)
        return path


def load_artifact(path: str | Path) -> Artifact:
    """Load and validate an artifact; refuses a feature list or transform that does not match."""
    doc = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(doc, dict) or doc.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"{path}: not a {ARTIFACT_FORMAT} artifact")
    features = tuple(doc["features"])
    if features != FEATURES:
        raise ValueError(f"{path}: feature list differs from this build's {N_FEATURES} NF-v2 features "
                         f"(artifact has {len(features)}; first mismatch at "
                         f"{next((i for i, (a, b) in enumerate(zip(features, FEATURES, strict=False)) if a != b), min(len(features), N_FEATURES))})")
    preprocess.check_spec(doc["preprocessing"])
    arch = doc["architecture"]
    # Artifacts from before the periodic features have neither "periodic" nor "dropout": none.
    model = PhoenixMLP(int(arch["inputs"]), tuple(arch["hidden"]), tuple(arch.get("periodic", ())),
                       float(arch.get("dropout", 0.0)))
    model.load_state_dict(doc["state_dict"])
    model.eval()
    return Artifact(model, float(doc["threshold"]), dict(doc.get("provenance", {})), features)


def new_version(strategy: str) -> str:
    return f"{strategy}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def bf16_native(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run natively here (AVX512-BF16/AMX CPUs, Ampere+ GPUs)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Scorer:
    """Batch inference: raw feature matrix in, probabilities out. No per-record calls.

    ``precision="bf16"`` runs the linear layers under bfloat16 autocast (LayerNorm and the
    sigmoid stay float32); ``"auto"`` picks it where the hardware runs bf16 natively, else fp32.
    On CUDA the input goes through pinned host memory. On CPU the plain eager module is used:
    measured on this project's machines, TorchScript trace+freeze was slower for this MLP.
    """

    def __init__(self, artifact: Artifact, device: str = "auto", threads: int | None = None,
                 precision: str = "fp32") -> None:
        self.artifact = artifact
        self.threshold = artifact.threshold
        self.device = pick_device(device)
        if threads:
            torch.set_num_threads(threads)
        if precision == "auto":
            precision = "bf16" if bf16_native(self.device) else "fp32"
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32, bf16 or auto, not {precision!r}")
        self.precision = precision
        self._model = artifact.model.to(self.device).eval()

    def scores(self, raw: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(preprocess.transform(raw))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(self.device.type, torch.bfloat16,
                                                    enabled=self.precision == "bf16"):
            logits = self._model(x)
        return torch.sigmoid(logits.float()).cpu().numpy()
