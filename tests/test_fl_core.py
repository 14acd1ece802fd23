"""Model artifact, preprocessing parity, metrics and ``phoenix evaluate`` (fast, real data)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from fl import data, preprocess, task
from fl.model import ARCHITECTURES, PERIODIC, Artifact, PeriodicFeatures, PhoenixMLP, Scorer, load_artifact
from phoenix.config import PROJECT_ROOT
from phoenix.schema import FEATURES, LABEL

NF = PROJECT_ROOT.parent / "shared" / "data" / "nf"
CSE = NF / "NF-CSE-CIC-IDS2018-v2.parquet"
REPLAY = NF / "NF-ToN-IoT-v2-replay-10k.csv"


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> str:
    """2,000 real CSE rows plus rows carrying the known quirks (1e46, NaN, negatives)."""
    df = pd.read_parquet(CSE).head(2000)
    odd = df.head(6).copy()
    odd["SRC_TO_DST_SECOND_BYTES"] = [1e46, 3e45, np.nan, -5.0, 1e12, 0.0]
    odd["DST_TO_SRC_SECOND_BYTES"] = [np.nan, 1e46, 7.0, 1e46, -1.0, 2.0]
    odd["IN_BYTES"] = [11, 12, 13, 14, 15, 16]  # distinct, so de-duplication keeps them
    path = tmp_path_factory.mktemp("nf") / "NF-Test-quirks.parquet"
    pd.concat([df, odd]).to_parquet(path)
    return str(path)


def test_preprocessing_bounded_and_finite() -> None:
    x = np.zeros((4, len(FEATURES)))
    x[0, 18], x[1, 19], x[2, 0], x[3, 2] = 1e46, np.nan, -3.0, 2.0**40
    z = preprocess.transform(x)
    assert z.dtype == np.float32 and np.isfinite(z).all()
    assert z.min() >= 0.0 and z.max() <= 1.0
    assert z[0, 18] == pytest.approx(1.0) and z[3, 2] == pytest.approx(1.0)
    assert z[1, 19] == 0.0 and z[2, 0] == 0.0


def test_codes_are_spelled_out() -> None:
    """Hand-checked encodings of the code-valued features (flags, protocol, TTL, nDPI, DNS type)."""
    col = {f: i for i, f in enumerate(FEATURES)}
    x = np.zeros((2, len(FEATURES)))
    x[0, [col["PROTOCOL"], col["TCP_FLAGS"], col["CLIENT_TCP_FLAGS"], col["L7_PROTO"]]] = [6, 18, 2, 7.178]
    x[0, [col["MIN_TTL"], col["MAX_TTL"], col["DNS_QUERY_TYPE"]]] = [64, 255, 28]
    x[1, [col["PROTOCOL"], col["L7_PROTO"], col["DNS_QUERY_TYPE"], col["TCP_FLAGS"]]] = [47, 999.5, 9999, 1e9]
    z = preprocess.transform(x)
    assert z.shape == (2, preprocess.WIDTH) == (2, len(preprocess.COLUMNS))
    hot = [{preprocess.COLUMNS[j]: round(float(r[j]), 4) for j in np.nonzero(r)[0] if j >= len(FEATURES)}
           for r in z]
    assert hot[0] == {"TCP_FLAGS:SYN": 1.0, "TCP_FLAGS:ACK": 1.0, "CLIENT_TCP_FLAGS:SYN": 1.0,
                      "PROTOCOL:6": 1.0, "MIN_TTL:linear": round(64 / 255, 4), "MAX_TTL:linear": 1.0,
                      "L7_PROTO:HTTP": 1.0, "DNS_QUERY_TYPE:28": 1.0}
    # Unknown codes land in "other"; an absurd flags value is clipped to all eight bits, not wrapped.
    assert hot[1] == {**{f"TCP_FLAGS:{b}": 1.0 for b in preprocess.FLAG_BITS}, "PROTOCOL:other": 1.0,
                      "L7_PROTO:other": 1.0, "DNS_QUERY_TYPE:other": 1.0}


def test_codes_no_training_row_carries_do_not_move_scores() -> None:
    """Code columns start at zero weight, so one that training never saw active (here: NTP, as in
    NF-v2) leaves every score unchanged at serving time, while the scaled columns still learn."""
    col = {f: i for i, f in enumerate(FEATURES)}
    rng = np.random.default_rng(5)
    x = np.zeros((512, len(FEATURES)))
    x[:, col["IN_BYTES"]] = rng.integers(40, 10**6, 512)
    x[:, col["PROTOCOL"]], x[:, col["L7_PROTO"]] = 17, 5.0  # all DNS
    y = (x[:, col["IN_BYTES"]] > 5000).astype(np.float32)
    model = task.make_model(0)
    task.train(model, preprocess.transform(x), y, 3)
    ntp = x.copy()
    ntp[:, col["L7_PROTO"]] = 9.0
    z_dns, z_ntp = preprocess.transform(x), preprocess.transform(ntp)
    j_ntp, j_dns = preprocess.COLUMNS.index("L7_PROTO:NTP"), preprocess.COLUMNS.index("L7_PROTO:DNS")
    assert z_ntp[:, j_ntp].all() and not z_dns[:, j_ntp].any()
    w = model.net[0].weight.detach()
    assert float(w[:, j_ntp].abs().max()) == 0.0
    assert float(w[:, j_dns].abs().max()) > 0.0
    # The NTP flows score as if the code were absent (the "other" bucket is not set either).
    cleared = z_ntp.copy()
    cleared[:, j_ntp] = 0.0
    np.testing.assert_array_equal(task.predict(model, z_ntp), task.predict(model, cleared))


def test_training_and_serving_apply_the_same_transform(small_file: str) -> None:
    """The trainer's inputs are preprocess.transform of the raw rows, and Scorer scores raw rows
    to the same probabilities: one transform for training and serving, 1e46/NaN included."""
    org = data.load_org(small_file)
    x_raw, y = data.read_labeled(small_file)
    x_raw, y = data.dedup(x_raw, y)
    tr, va, te = data.split_indices(y)
    assert np.array_equal(org.x_train, preprocess.transform(x_raw[tr]))
    assert np.array_equal(org.x_test, preprocess.transform(x_raw[te]))
    model = task.make_model(1)
    task.train(model, org.x_train, org.y_train, 1)
    scorer = Scorer(Artifact(model, 0.5), device="cpu")
    quirky = x_raw[np.isnan(x_raw).any(axis=1) | (x_raw > 1e40).any(axis=1)]
    assert len(quirky) >= 4
    for raw in (x_raw[te], quirky):
        served = scorer.scores(raw)
        trained = task.predict(model, preprocess.transform(raw))
        assert np.isfinite(served).all()
        np.testing.assert_allclose(served, trained, atol=1e-5)


def test_dedup_before_split_no_leak(small_file: str) -> None:
    org = data.load_org(small_file)
    rows = lambda x: {r.tobytes() for r in x}  # noqa: E731
    assert not rows(org.x_train) & rows(org.x_test)
    assert org.rows_unique <= org.rows_raw
    assert len(org.y_train) + len(org.y_val) + len(org.y_test) == org.rows_unique


def test_artifact_round_trip_and_wrong_features(tmp_path) -> None:
    model = task.make_model(3)
    prov = {"version": "test-1", "strategy": "fedavg", "rounds": 2}
    path = Artifact(model, 0.37, prov).save(tmp_path / "m.pt")
    art = load_artifact(path)
    assert art.threshold == pytest.approx(0.37) and art.provenance["strategy"] == "fedavg"
    for a, b in zip(model.state_dict().values(), art.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    doc = torch.load(path, weights_only=True)
    doc["features"] = list(reversed(doc["features"]))
    torch.save(doc, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="feature list"):
        load_artifact(tmp_path / "bad.pt")
    doc["features"] = list(FEATURES)
    doc["preprocessing"] = {"name": "minmax", "version": 1}
    torch.save(doc, tmp_path / "bad2.pt")
    with pytest.raises(ValueError, match="preprocessing"):
        load_artifact(tmp_path / "bad2.pt")


def test_artifact_records_architecture_and_loads_older_ones(tmp_path) -> None:
    """The periodic network's cycles and dropout travel in the artifact; an artifact from before they
    existed (no "periodic", no "dropout" entry) loads as the network it was and scores the same."""
    art = load_artifact(Artifact(task.make_model(2, "periodic"), 0.5).save(tmp_path / "new.pt"))
    assert art.model.architecture()["periodic"] == list(PERIODIC) and art.model.dropout > 0
    assert art.model.net[0].in_features == preprocess.WIDTH + 2 * len(FEATURES) * len(PERIODIC)
    with pytest.raises(ValueError, match="unknown architecture"):
        task.make_model(0, "transformer")
    from phoenix.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    assert set(next(a for a in train._actions if a.dest == "arch").choices) == set(ARCHITECTURES)
    old = PhoenixMLP(hidden=(512, 256, 128, 96, 48), periodic=(), dropout=0.0)
    doc = torch.load(Artifact(old, 0.5).save(tmp_path / "old.pt"), weights_only=True)
    for key in ("periodic", "dropout"):
        del doc["architecture"][key]
    torch.save(doc, tmp_path / "old.pt")
    loaded = load_artifact(tmp_path / "old.pt").model
    assert loaded.architecture()["periodic"] == [] and loaded.net[0].in_features == preprocess.WIDTH
    x = torch.from_numpy(preprocess.transform(np.random.default_rng(0).integers(0, 9999, (64, len(FEATURES)))))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), old.eval()(x))


def test_periodic_features_by_hand() -> None:
    """sin and cos of the scaled columns only, at the given cycles; the code columns pass through."""
    pf = PeriodicFeatures((1.0, 4.0), n_scaled=2)
    out = pf(torch.tensor([[0.25, 0.125, 7.0]]))
    # x, then sin of (col 0 at 1 and 4 cycles, col 1 at 1 and 4), then cos of the same: angles
    # π/2, 2π, π/4, π.
    r = 0.5 ** 0.5
    torch.testing.assert_close(out, torch.tensor([[0.25, 0.125, 7.0, 1, 0, r, 0, 0, 1, r, -1]]), atol=1e-5, rtol=0)


def test_periodic_features_separate_what_the_log_scale_merges() -> None:
    """TCP windows 64,240 (Linux) and 65,535 sit 0.0007 apart on the log scale; at 1,024 cycles
    their periodic features differ by far more than the scaled values do."""
    col = FEATURES.index("TCP_WIN_MAX_IN")
    raw = np.zeros((2, len(FEATURES)))
    raw[:, col] = (64240, 65535)
    z = torch.from_numpy(preprocess.transform(raw))
    assert float(abs(z[0, col] - z[1, col])) < 1e-3
    out = PeriodicFeatures()(z)
    assert float((out[0] - out[1]).abs().max()) > 0.5


def test_threshold_counts_match_metrics() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.3).astype(np.float32)
    s = np.clip(y * 0.6 + rng.random(500) * 0.5, 0, 1).astype(np.float32)
    c = task.counts_at(y, s)
    thr = task.choose_threshold([c])
    i = int(np.argmin(np.abs(task.THRESHOLDS - thr)))
    m = task.metrics(y, s, thr)
    assert (c["tp"][i], c["fp"][i], c["fn"][i], c["tn"][i]) == (m["tp"], m["fp"], m["fn"], m["tn"])
    assert m["f1"] == pytest.approx(task.f1_from_counts(c["tp"], c["fp"], c["fn"]).max())


def test_multiplicity_kept_per_label_variant() -> None:
    """dedup keeps one row per (features, label) and its count; conflicting labels stay apart."""
    x = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [5.0, 6.0]])
    y = np.array([1, 1, 0, 0, 1, 0])
    xu, yu, c = data.dedup_counts(x, y)
    assert xu.tolist() == [[1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert yu.tolist() == [1, 0, 0, 0] and c.tolist() == [3.0, 1.0, 1.0, 1.0]
    assert c.sum() == len(y)
    np.testing.assert_allclose(task.row_weights(c, "log", 4), 1 + np.log(c))
    np.testing.assert_allclose(task.row_weights(c, "sqrt", 4), np.sqrt(c))
    assert task.row_weights(c, "none", 4).tolist() == [1.0] * 4


def test_loaded_multiplicities_sum_to_file_rows(small_file: str) -> None:
    org = data.load_org(small_file)
    total = sum(float(org.counts(s).sum()) for s in ("train", "val", "test"))
    assert total == org.rows_raw and min(org.counts(s).min() for s in ("train", "val", "test")) >= 1


def test_weighted_counts_match_repeated_rows() -> None:
    """Weighted TP/FP/FN/TN equal the plain counts of the data with each row repeated count times."""
    rng = np.random.default_rng(2)
    y = (rng.random(300) < 0.4).astype(np.float32)
    s = rng.random(300).astype(np.float32)
    w = rng.integers(1, 6, 300)
    cw = task.counts_at(y, s, weight=w.astype(np.float64))
    c = task.counts_at(np.repeat(y, w), np.repeat(s, w))
    for k in ("tp", "fp", "fn", "tn"):
        np.testing.assert_allclose(cw[k], c[k])


def test_proximal_term_holds_weights_near_global() -> None:
    """FedProx: the penalty acts on every batch, so a large mu keeps the update small."""
    rng = np.random.default_rng(1)
    x = rng.random((2048, preprocess.WIDTH), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.float32)
    drift = {}
    for mu in (0.0, 100.0):
        model = task.make_model(0)
        start = [p.detach().clone() for p in model.parameters()]
        task.train(model, x, y, 2, proximal_mu=mu)
        drift[mu] = sum(float(((p.detach() - s) ** 2).sum()) for p, s in zip(model.parameters(), start, strict=True))
    assert drift[100.0] < 0.2 * drift[0.0]


def test_global_class_weights_are_not_renormalised_per_node() -> None:
    """With server-sent class weights each node's loss is (1/n)·Σ w(y)·ℓ, not re-scaled to mean 1,
    so the nodes' losses add up to the pooled globally balanced loss; weights (1, 1) = plain loss."""
    rng = np.random.default_rng(3)
    x = rng.random((256, preprocess.WIDTH), dtype=np.float32)
    y = (rng.random(256) < 0.9).astype(np.float32)  # a BoT-like node: mostly attacks

    def first_loss(**kw) -> float:
        model = task.make_model(0)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the loss of the initial model
        return task.train(model, x, y, 1, optimizer=opt, batch=256, **kw)

    plain = first_loss()
    assert first_loss(class_weight=(1.0, 1.0)) == pytest.approx(plain, rel=1e-6)
    assert first_loss(class_weight=(2.0, 2.0)) == pytest.approx(2 * plain, rel=1e-5)
    # balanced=True is overridden: local balancing would rescale to mean 1 on this node.
    assert first_loss(class_weight=(2.0, 2.0), balanced=True) == pytest.approx(2 * plain, rel=1e-5)


def test_local_steps_and_optimizer_state_round_trip() -> None:
    """max_steps bounds the batches of a round; the optimizer state survives optimizer_arrays."""
    rng = np.random.default_rng(4)
    x = rng.random((1000, preprocess.WIDTH), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.float32)
    model = task.make_model(0)
    opt = task.make_optimizer(model, "adamw", 1e-3)
    task.train(model, x, y, 1, optimizer=opt, batch=100, max_steps=3)
    arrays = task.optimizer_arrays(opt)
    assert {float(v) for k, v in arrays.items() if k.endswith("/step")} == {3.0}
    task.train(model, x, y, 1, optimizer=opt, batch=100, max_steps=25)  # 25 > one epoch of 10 batches
    assert {float(v) for k, v in task.optimizer_arrays(opt).items() if k.endswith("/step")} == {28.0}
    fresh = task.make_optimizer(model, "adamw", 1e-3)
    task.load_optimizer_arrays(fresh, task.optimizer_arrays(opt), lr=5e-4)
    for k, v in task.optimizer_arrays(opt).items():
        np.testing.assert_array_equal(task.optimizer_arrays(fresh)[k], v)
    assert fresh.param_groups[0]["lr"] == 5e-4
    sgd = task.make_optimizer(model, "sgd", 0.1, momentum=0.9)
    task.train(model, x, y, 1, optimizer=sgd, batch=100, max_steps=2)
    assert any(k.endswith("/momentum_buffer") for k in task.optimizer_arrays(sgd))


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phoenix", "evaluate", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_evaluate_json_shape(small_file: str) -> None:
    proc = _evaluate("--model", str(PROJECT_ROOT / "models" / "phoenix.pt"), "--data", str(CSE), small_file, "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert set(doc) == {"NF-CSE-CIC-IDS2018-v2", "NF-Test-quirks"}
    for m in doc.values():
        assert {"rows", "accuracy", "precision", "recall", "f1", "fpr"} <= set(m)
        assert 0.0 <= m["f1"] <= 1.0
    assert doc["NF-CSE-CIC-IDS2018-v2"]["rows"] == len(pd.read_parquet(CSE, columns=[LABEL]))


def test_evaluate_refuses_unlabeled_file() -> None:
    proc = _evaluate("--data", str(REPLAY), "--json")
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "Label" in proc.stderr


def test_strategy_recipes_resolve_auto_settings() -> None:
    """'auto' settings take the strategy's recipe: server-side optimizers get local SGD steps on the
    globally balanced loss, the other strategies keep AdamW epochs with a per-node balance."""
    from fl import server_app

    shipped = server_app.resolve({**server_app.DEFAULTS})
    assert shipped["strategy"] == "fedadam" and shipped["class-balance"] == "global"
    assert shipped["local-optimizer"] == "sgd" and shipped["local-steps"] == 1 and shipped["lr"] == 0.05
    assert shipped["server-lr"] == 2e-3 and shipped["num-server-rounds"] == 2000
    median = server_app.resolve({**server_app.DEFAULTS, "strategy": "fedmedian"})
    assert median["class-balance"] == "local" and median["local-optimizer"] == "adamw"
    assert median["local-steps"] == 0 and median["lr"] == task.LR
    assert server_app.resolve({**server_app.DEFAULTS, "strategy": "fedavg", "balanced": False})["class-balance"] == "none"
    explicit = server_app.resolve({**server_app.DEFAULTS, "lr": 0.01, "class-balance": "none"})
    assert explicit["lr"] == 0.01 and explicit["class-balance"] == "none"
    # Names only mention what differs from the recipe, so earlier result names stay valid.
    assert server_app.run_label({**server_app.DEFAULTS, "strategy": "fedmedian", "num-server-rounds": 60}) == "fedmedian-r60"
    assert server_app.run_label({**server_app.DEFAULTS, "num-server-rounds": 20}) == "fedadam"
    assert server_app.run_label({**server_app.DEFAULTS, "strategy": "fedavg", "num-server-rounds": 20,
                                 "class-balance": "global", "keep-optimizer": True}) == "fedavg-gbal-keepopt"


def test_ema_of_the_global_model() -> None:
    """Server-side Polyak averaging: avg starts at the first aggregated model, then
    avg = decay·avg + (1 − decay)·w; training gets the raw model, evaluation the average."""
    from flwr.app import ArrayRecord

    from fl import server_app

    rounds = [{"w": np.full((2, 3), v, np.float32), "b": np.array([v], np.float32)} for v in (1.0, 3.0, -2.0)]
    ema = server_app.EMA(0.9)
    expected = None
    for r in rounds:
        out = ema.update(ArrayRecord(array_dict={k: server_app.Array(v) for k, v in r.items()}))
        expected = {k: v.astype(np.float64) for k, v in r.items()} if expected is None else \
            {k: 0.9 * expected[k] + 0.1 * r[k] for k in r}
        got = {k: a.numpy() for k, a in out.items()}
        assert list(got) == ["w", "b"] and got["w"].dtype == np.float32
        assert all(np.allclose(got[k], expected[k]) for k in r)
    assert np.allclose(ema.arrays()["b"].numpy(), [0.9 * (0.9 * 1 + 0.1 * 3) + 0.1 * -2])
    with pytest.raises(ValueError):
        server_app.EMA(1.0)

    class Inner:  # a stand-in strategy: aggregation returns the round's model; records what it evaluates
        evaluated: list = []

        def aggregate_train(self, server_round, replies):
            return ArrayRecord(array_dict={k: server_app.Array(v) for k, v in rounds[server_round - 1].items()}), None

        def configure_evaluate(self, server_round, arrays, config, grid):
            self.evaluated.append(arrays["b"].numpy().item())
            return []

    wrapped = server_app.EMAStrategy(Inner(), 0.5)
    raw = [wrapped.aggregate_train(rnd, [])[0]["b"].numpy().item() for rnd in (1, 2)]
    assert raw == [1.0, 3.0]  # training continues from the raw global model
    wrapped.configure_evaluate(2, ArrayRecord(array_dict={"b": server_app.Array(np.array([3.0], np.float32))}), None, None)
    assert Inner.evaluated == [pytest.approx(2.0)]  # the nodes evaluate 0.5·1 + 0.5·3
    assert server_app.run_label({**server_app.DEFAULTS, "num-server-rounds": 20, "ema": 0.99}) == "fedadam-ema0.99"
    assert server_app.run_label({**server_app.DEFAULTS, "num-server-rounds": 20}) == "fedadam"
