"""SCAFFOLD (Karimireddy et al., 2020) on Flower's Message API, on top of :class:`FedAvg`.

Why: the four organisations are far from identically distributed (BoT-IoT 97 % attacks, CSE-CIC
10 %, disjoint feature regions). With FedAvg every node's local steps drift towards its own
optimum and extrapolate badly over the others' regions. SCAFFOLD sends a server control variate
``c`` with the model; each node keeps its own ``c_i`` (in ``Context.state``, across rounds) and
adds ``c − c_i`` to every local gradient, so local steps follow the federation's gradient rather
than its own. Nodes return ``Δc_i`` next to their weights; ``c`` moves by their sample-weighted mean.

Only gradient averages leave a node, like the weights themselves.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

CONTROL = "control"          # server → node: c
CONTROL_DELTA = "control-delta"  # node → server: c_i(new) − c_i(old)


class Scaffold(FedAvg):
    """FedAvg weights + SCAFFOLD control variates (full participation, sample-weighted)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.control: dict[str, np.ndarray] | None = None

    def summary(self) -> None:
        super().summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.control is None:
            self.control = {k: np.zeros_like(a.numpy()) for k, a in arrays.items()}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        control = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in self.control.items()})
        for msg in messages:
            msg.content[CONTROL] = control
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        deltas: list[tuple[float, dict[str, np.ndarray]]] = []
        for msg in replies:
            if msg.has_content() and CONTROL_DELTA in msg.content.array_records:
                rec = msg.content.array_records[CONTROL_DELTA]
                weight = float(next(iter(msg.content.metric_records.values()))[self.weighted_by_key])
                deltas.append((weight, {k: rec[k].numpy() for k in rec.keys()}))
                # FedAvg expects exactly one ArrayRecord per reply: the weights.
                del msg.content[CONTROL_DELTA]
        arrays, metrics = super().aggregate_train(server_round, replies)
        if deltas and self.control is not None:
            total = sum(w for w, _ in deltas)
            for k in self.control:
                self.control[k] = self.control[k] + sum(w * d[k] for w, d in deltas) / total
        return arrays, metrics

