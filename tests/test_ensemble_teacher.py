"""The ensemble teacher kind: aggregation rules against hand formulas, dropping, the gate, features and the recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kdforge
from kdforge.data import DataBundle
from kdforge.data.base import ArrayDataset
from kdforge.engine.checkpoint import save_model
from kdforge.errors import ConfigError
from kdforge.models import build_model
from kdforge.recipe import validate
from kdforge.signals import Needs, StudentOutput
from kdforge.teachers import Ensemble, Live
from kdforge.teachers.ensemble import drop_mask, gate_log_weights, renormalise
from kdforge.teachers.standardize import apply, fit

LOGITS = Needs(teacher_logits=True)


def nets(k: int = 3, d: int = 6, c: int = 4, seed: int = 0) -> list[nn.Module]:
    """K small MLPs with different weights (scaled up so their predictions differ clearly)."""
    torch.manual_seed(seed)
    out = []
    for _ in range(k):
        net = nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, c))
        with torch.no_grad():
            net[2].weight.mul_(4.0)
        out.append(net)
    return out


def members(networks: list[nn.Module]) -> list[Live]:
    return [Live(n) for n in networks]


def probs(networks: list[nn.Module], x: torch.Tensor, T: float = 1.0) -> np.ndarray:
    """(K, ..., C) member probabilities, computed directly from the networks."""
    with torch.no_grad():
        return np.stack([torch.softmax(n(x).double() / T, dim=-1).numpy() for n in networks])


def taught(ensemble: Ensemble, batch: dict) -> np.ndarray:
    """The ensemble's teaching logits for ``batch``."""
    out = ensemble.signals(batch, LOGITS).logits
    assert isinstance(out, kdforge.DenseSignal)
    return out.logits.double().numpy()


def entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p)).sum(-1)


X = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))


# -- aggregation rules -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_mean_is_the_log_of_the_average_probability(T: float) -> None:
    networks = nets()
    p = probs(networks, X, T)
    got = taught(Ensemble(members(networks), "mean", temperature=T), {"input": X})
    np.testing.assert_allclose(got, np.log(p.mean(0)), atol=1e-5)
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, atol=1e-5)


def test_fixed_weights_are_normalised() -> None:
    networks = nets()
    p = probs(networks, X)
    got = taught(Ensemble(members(networks), "weights", weights=[1.0, 0.0, 3.0]), {"input": X})
    np.testing.assert_allclose(got, np.log(0.25 * p[0] + 0.75 * p[2]), atol=1e-5)


def test_confidence_weights_follow_each_members_top_probability() -> None:
    networks = nets()
    p = probs(networks, X)
    conf = p.max(-1)  # (K, B)
    w = conf / conf.sum(0)
    expected = np.log((w[..., None] * p).sum(0))
    got = taught(Ensemble(members(networks), "confidence"), {"input": X})
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, np.log(p.mean(0)), atol=1e-3)  # the rule matters on these members


def test_entropy_weights_favour_the_more_certain_member() -> None:
    networks = nets()
    p = probs(networks, X)
    e = np.exp(-entropy(p))
    w = e / e.sum(0)
    got = taught(Ensemble(members(networks), "entropy"), {"input": X})
    np.testing.assert_allclose(got, np.log((w[..., None] * p).sum(0)), atol=1e-5)


def test_tag_picks_one_member_per_sample() -> None:
    networks = nets()
    p = probs(networks, X)
    tags = torch.arange(16) % 3
    got = taught(Ensemble(members(networks), "tag"), {"input": X, "tag": tags})
    expected = np.log(np.stack([p[int(t), i] for i, t in enumerate(tags)]))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_tag_field_errors_name_the_key() -> None:
    ensemble = Ensemble(members(nets(k=2)), "tag", tag_field="teacher_id")
    with pytest.raises(ConfigError, match=r"teacher\.tag_field='teacher_id': the batch has no field 'teacher_id'"):
        ensemble.signals({"input": X}, LOGITS)
    bad = torch.zeros(16, dtype=torch.long)
    bad[3] = 5
    with pytest.raises(ConfigError, match=r"tag 5 is out of range; the ensemble has 2 members") as err:
        ensemble.signals({"input": X, "teacher_id": bad}, LOGITS)
    assert "\n" not in str(err.value)


def test_sequence_logits_are_mixed_per_position() -> None:
    networks = nets(k=2)
    x = torch.randn(3, 5, 6)
    p = probs(networks, x)  # (K, B, S, C)
    conf = p.max(-1)
    w = conf / conf.sum(0)
    got = taught(Ensemble(members(networks), "confidence"), {"input": x})
    np.testing.assert_allclose(got, np.log((w[..., None] * p).sum(0)), atol=1e-5)
    tags = torch.tensor([1, 0, 1])
    got = taught(Ensemble(members(networks), "tag"), {"input": x, "tag": tags})
    np.testing.assert_allclose(got, np.log(np.stack([p[1, 0], p[0, 1], p[1, 2]])), atol=1e-5)


def test_gate_at_initialisation_is_the_mean() -> None:
    networks = nets()
    p = probs(networks, X)
    got = taught(Ensemble(members(networks), "gate"), {"input": X})
    np.testing.assert_allclose(got, np.log(p.mean(0)), atol=1e-5)


def test_kd_on_the_ensemble_is_kl_from_the_mixture() -> None:
    networks = nets()
    p = probs(networks, X)
    w = np.array([0.2, 0.5, 0.3])
    mixture = (w[:, None, None] * p).sum(0)
    signal = Ensemble(members(networks), "weights", weights=[2, 5, 3]).signals({"input": X}, LOGITS).logits
    student = torch.randn(16, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    value = kdforge.objective("kd", T=1.0, alpha=1.0)(student.float(), signal.logits)
    log_q = torch.log_softmax(student, dim=-1).numpy()
    by_hand = (mixture * (np.log(mixture) - log_q)).sum(-1).mean()
    assert float(value) == pytest.approx(by_hand, rel=1e-4, abs=1e-6)


def test_members_must_share_their_outputs() -> None:
    mixed = [nn.Linear(6, 4), nn.Linear(6, 5)]
    with pytest.raises(ConfigError, match="differ in shape"):
        Ensemble(members(mixed)).signals({"input": X}, LOGITS)


# -- teacher dropping --------------------------------------------------------------------------------------------------


def test_drop_draws_are_a_function_of_seed_and_counter() -> None:
    assert torch.equal(drop_mask(3, 7, 4, 0.5), drop_mask(3, 7, 4, 0.5))
    draws = torch.stack([drop_mask(3, i, 3, 0.5) for i in range(2000)])
    assert len({tuple(d.tolist()) for d in draws[:40]}) > 2  # draws vary with the counter
    assert bool(draws.any(dim=1).all())  # never all members dropped
    # P(keep) = 0.5, plus 1/3 of the all-dropped draws (1/8) that keep one member back: 0.5417.
    assert 0.51 < float(draws.float().mean()) < 0.58
    heavy = torch.stack([drop_mask(0, i, 4, 0.95) for i in range(500)])
    assert bool((heavy.sum(dim=1) >= 1).all())
    assert not torch.equal(drop_mask(1, 7, 4, 0.5), drop_mask(2, 7, 4, 0.5)) or not torch.equal(
        drop_mask(1, 8, 4, 0.5), drop_mask(2, 8, 4, 0.5)
    )


def dropped_mixture(p: np.ndarray, keep: torch.Tensor) -> np.ndarray:
    kept = keep.numpy()
    return np.log(p[kept].mean(0))


def test_training_batches_mix_the_kept_members_only() -> None:
    networks = nets()
    p = probs(networks, X)
    ensemble = Ensemble(members(networks), drop=0.5, seed=11)
    changed = 0
    for i in range(12):
        got = taught(ensemble, {"input": X})
        keep = drop_mask(11, i, 3, 0.5)
        np.testing.assert_allclose(got, dropped_mixture(p, keep), atol=1e-5)
        changed += int(not bool(keep.all()))
    assert ensemble.batches == 12
    assert changed > 0


def test_evaluation_never_drops() -> None:
    networks = nets()
    mean = np.log(probs(networks, X).mean(0))
    student = nn.Linear(6, 4)
    ensemble = Ensemble(members(networks), drop=0.9, seed=0)
    ensemble.setup({"student": student})
    student.eval()
    for _ in range(10):
        np.testing.assert_allclose(taught(ensemble, {"input": X}), mean, atol=1e-5)
    student.train()
    with torch.no_grad():
        for _ in range(10):
            np.testing.assert_allclose(taught(ensemble, {"input": X}), mean, atol=1e-5)
    assert ensemble.batches == 0
    taught(ensemble, {"input": X})  # a training batch: counted (and, at drop=0.9, most likely dropped)
    assert ensemble.batches == 1


def test_resumed_dropping_continues_the_same_draws() -> None:
    networks = nets()
    uninterrupted = Ensemble(members(networks), drop=0.6, seed=4)
    outs = [taught(uninterrupted, {"input": X}) for _ in range(11)]
    assert any(not np.allclose(outs[0], o) for o in outs[1:])  # the draws do change between batches
    first = Ensemble(members(networks), drop=0.6, seed=4)
    for _ in range(5):
        taught(first, {"input": X})
    resumed = Ensemble(members(networks), drop=0.6, seed=4)
    resumed.load_state_dict(first.state_dict())
    assert resumed.batches == 5
    for i in range(5, 11):
        np.testing.assert_array_equal(taught(resumed, {"input": X}), outs[i])


def test_drop_zero_is_exactly_the_mean() -> None:
    networks = nets()
    plain = Ensemble(members(networks), "mean")
    no_drop = Ensemble(members(networks), "mean", drop=0.0, seed=123)
    for _ in range(3):
        np.testing.assert_array_equal(taught(no_drop, {"input": X}), taught(plain, {"input": X}))
    log_w = torch.log(torch.tensor([0.2, 0.3, 0.5]))
    assert torch.allclose(renormalise(log_w, torch.ones(3, dtype=torch.bool)), log_w)
    assert torch.allclose(renormalise(log_w, torch.tensor([True, False, True])).exp(), torch.tensor([2 / 7, 0, 5 / 7]))


# -- the gate ----------------------------------------------------------------------------------------------------------


def right_and_wrong() -> list[nn.Module]:
    """Member 0 predicts the label of a one-hot input; member 1 predicts the next class (always wrong)."""
    right, wrong = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        right.weight.copy_(3.0 * torch.eye(3))
        wrong.weight.copy_(3.0 * torch.eye(3)[[2, 0, 1]])
    return [right, wrong]


def toy_batch(seed: int) -> dict:
    labels = torch.randint(3, (32,), generator=torch.Generator().manual_seed(seed))
    return {"input": nn.functional.one_hot(labels, 3).float(), "label": labels}


def gate_share(ensemble: Ensemble, batch: dict) -> float:
    """Member 0's mean gate weight on ``batch``."""
    with torch.no_grad():
        lp = torch.stack([torch.log_softmax(n(batch["input"]), -1) for n in right_and_wrong()])
        assert ensemble.gate is not None
        return float(gate_log_weights(ensemble.gate, lp).exp()[0].mean())


def test_gate_learns_to_trust_the_right_member() -> None:
    ensemble = Ensemble(members(right_and_wrong()), "gate", gate_lr=0.5)
    ensemble.signals(toy_batch(0), LOGITS)
    assert gate_share(ensemble, toy_batch(0)) == pytest.approx(0.5)
    losses = []
    for step in range(40):
        batch = toy_batch(step)
        logits = ensemble.signals(batch, LOGITS).logits.logits
        losses.append(float(nn.functional.nll_loss(logits, batch["label"])))
        ensemble.observe(batch, StudentOutput(logits=None))
    assert gate_share(ensemble, toy_batch(99)) > 0.8
    assert losses[-1] < losses[0] - 0.3
    # A resumed run restores the gate: the same mixture from its state alone.
    resumed = Ensemble(members(right_and_wrong()), "gate", gate_lr=0.5)
    resumed.load_state_dict(ensemble.state_dict())
    with torch.no_grad():
        a = ensemble.signals(toy_batch(7), LOGITS).logits.logits
        b = resumed.signals(toy_batch(7), LOGITS).logits.logits
    assert torch.equal(a, b)


def test_gate_trains_only_on_labelled_rows_of_the_batch_it_mixed() -> None:
    ensemble = Ensemble(members(right_and_wrong()), "gate", gate_lr=0.5)
    batch = toy_batch(1)
    unlabelled = {"input": batch["input"]}
    ensemble.signals(unlabelled, LOGITS)
    ensemble.observe(unlabelled, StudentOutput(logits=None))
    assert ensemble.gate is not None and not ensemble.gate.weight.any()
    ignored = {**batch, "label": torch.full((32,), -100)}
    ensemble.signals(ignored, LOGITS)
    ensemble.observe(ignored, StudentOutput(logits=None))
    assert not ensemble.gate.weight.any()
    ensemble.signals(batch, LOGITS)
    ensemble.observe(toy_batch(2), StudentOutput(logits=None))  # not the batch signals() mixed: skipped
    assert not ensemble.gate.weight.any()
    ensemble.observe(batch, StudentOutput(logits=None))  # the cache was spent by the call above
    assert not ensemble.gate.weight.any()
    ensemble.signals(batch, LOGITS)
    ensemble.observe(batch, StudentOutput(logits=None))
    assert ensemble.gate.weight.any()


def test_gate_step_under_a_process_group_matches_one_process(tmp_path: Path) -> None:
    def stepped() -> torch.Tensor:
        ensemble = Ensemble(members(right_and_wrong()), "gate", gate_lr=0.5)
        for step in range(3):
            batch = toy_batch(step)
            ensemble.signals(batch, LOGITS)
            ensemble.observe(batch, StudentOutput(logits=None))
        assert ensemble.gate is not None
        return ensemble.gate.weight.detach().clone()

    alone = stepped()
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        grouped = stepped()  # the gradient and row count go through all_reduce (a sum over one rank)
    finally:
        torch.distributed.destroy_process_group()
    assert alone.any() and torch.allclose(grouped, alone)


def test_distiller_trains_the_gate_and_counts_training_batches_only() -> None:
    student = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 3))
    ensemble = Ensemble(members(right_and_wrong()), "gate", gate_lr=0.5, drop=0.3)
    distiller = kdforge.Distiller(student, ensemble, {"kd": {"weight": 1.0, "T": 1.0}})
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    distiller.train()
    for step in range(20):
        out = distiller(toy_batch(step))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        assert torch.isfinite(out.loss)
    assert ensemble.batches == 20
    assert gate_share(ensemble, toy_batch(50)) > 0.6
    distiller.eval()
    with torch.no_grad():
        distiller(toy_batch(60))
    assert ensemble.batches == 20
    # Evaluating the ensemble as one network neither drops members nor counts a training batch.
    ensemble.model(toy_batch(60)["input"])
    assert ensemble.batches == 20


# -- features ----------------------------------------------------------------------------------------------------------


def test_features_are_routed_to_members_by_index() -> None:
    networks = nets(k=2)
    ensemble = Ensemble(members(networks))
    out = ensemble.signals({"input": X}, Needs(teacher_features=("0:0", "1:1", "1:2")))
    assert out.logits is None and out.features is not None
    assert set(out.features.tensors) == {"0:0", "1:1", "1:2"}
    with torch.no_grad():
        assert torch.allclose(out.features["0:0"], networks[0][0](X))
        assert torch.allclose(out.features["1:1"], networks[1][1](networks[1][0](X)))
        assert torch.allclose(out.features["1:2"], networks[1](X))


@pytest.mark.parametrize("name", ["features.3", "x:0", "2:0", "0:"])
def test_feature_names_without_a_member_index_are_refused(name: str) -> None:
    ensemble = Ensemble(members(nets(k=2)))
    with pytest.raises(
        ConfigError, match=r"'<member>:<module path>' \(e\.g\. '0:features\.3'\), with member in 0\.\.1"
    ):
        ensemble.signals({"input": X}, Needs(teacher_features=(name,)))


def test_phi_s_standardizes_each_member_feature_with_statistics_fitted_once() -> None:
    networks = nets(k=2)
    fit_x = torch.randn(300, 6, generator=torch.Generator().manual_seed(2))
    ensemble = Ensemble(members(networks), standardize="phi_s", fit_inputs={"input": fit_x})
    needs = Needs(teacher_logits=True, teacher_features=("0:0", "1:0"))
    out = ensemble.signals({"input": X}, needs)
    with torch.no_grad():
        for k in (0, 1):
            expected = apply(fit(networks[k][0](fit_x)), networks[k][0](X))
            assert torch.allclose(out.features[f"{k}:0"], expected, atol=1e-5)
            on_fit = ensemble.signals({"input": fit_x}, needs).features[f"{k}:0"].double()
            cov = torch.cov(on_fit.T)
            assert torch.allclose(cov.diagonal(), torch.ones(8, dtype=torch.float64), atol=1e-4)
            assert on_fit.mean(0).abs().max() < 1e-4
    assert ensemble.stats["0:0"].hadamard
    state = ensemble.state_dict()
    assert {"phi_s.0:0.mean", "phi_s.0:0.whiten", "phi_s.1:0.hadamard"} <= set(state)
    # The resumed ensemble has no samples to fit on: it can only use the restored statistics.
    resumed = Ensemble(members(networks), standardize="phi_s")
    resumed.load_state_dict(state)
    again = resumed.signals({"input": X}, needs)
    for name in ("0:0", "1:0"):
        assert torch.equal(again.features[name], out.features[name])
    with pytest.raises(ConfigError, match="no training samples to fit the PHI-S statistics"):
        Ensemble(members(networks), standardize="phi_s").signals({"input": X}, needs)


def test_distiller_hints_a_student_layer_to_one_members_standardized_feature() -> None:
    torch.manual_seed(0)
    teachers = [nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 3)) for _ in range(2)]
    student = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 3))
    fit_x = torch.randn(64, 3, generator=torch.Generator().manual_seed(3))
    ensemble = Ensemble(members(teachers), standardize="phi_s", fit_inputs={"input": fit_x})
    hint = {"weight": 1.0, "student_layer": "0", "teacher_layer": "1:0"}
    distiller = kdforge.Distiller(student, ensemble, {"kd": {"weight": 1.0, "T": 2.0}, "hint": hint})
    batch = toy_batch(0)
    batch = {"input": torch.randn(8, 3), "label": batch["label"][:8]}
    distiller.prepare(batch)
    distiller.train()
    out = distiller(batch)
    out.loss.backward()
    assert set(out.terms) == {"kd", "hint"} and all(torch.isfinite(v) for v in out.terms.values())
    assert list(ensemble.stats) == ["1:0"]  # fitted for the one feature asked for, on member 1 only
    assert distiller.connectors["hint"][0].weight.grad is not None


# -- construction and the recipe ---------------------------------------------------------------------------------------


def test_python_construction_checks_the_recipe_rules() -> None:
    with pytest.raises(ConfigError, match=r"teacher\.members: .*at least two members"):
        Ensemble(members(nets(k=1)))
    with pytest.raises(ConfigError, match=r"teacher\.weights: expected 3 numbers"):
        Ensemble(members(nets()), "weights", weights=[1, 2])
    with pytest.raises(ConfigError, match=r"teacher\.drop"):
        Ensemble(members(nets()), drop=1.0)
    a, b = Ensemble(members(nets())), Ensemble(members(nets()), "entropy")
    assert a.fingerprint != b.fingerprint and len(a.fingerprint) == 16
    assert a.fingerprint == Ensemble(members(nets())).fingerprint


def recipe(**teacher) -> dict:
    member = {"model": {"name": "mlp", "params": {"hidden": [8]}}}
    return {"student": {"name": "mlp"}, "teacher": {"kind": "ensemble", "members": [member, member], **teacher}}


@pytest.mark.parametrize(
    ("teacher", "pattern"),
    [
        ({"members": []}, r"teacher\.members: an ensemble needs at least two members, got 0"),
        ({"members": [{"model": {"name": "mlp"}}]}, r"teacher\.members: .*at least two members, got 1"),
        ({"members": [{"model": {"name": "mlp"}}, {"kind": "ema"}]}, r"teacher\.members: member 1 has kind 'ema'"),
        ({"members": [{"model": {"name": "mlp"}}, {"seed": 2}]}, r"teacher\.members: member 1 has no model"),
        ({"aggregate": "weights"}, r"teacher\.weights: .*expected 2 numbers, one per member"),
        (
            {"aggregate": "weights", "weights": [1, 2, 3]},
            r"teacher\.weights: expected 2 numbers, one per member, got 3",
        ),
        ({"aggregate": "weights", "weights": [1, -2]}, r"teacher\.weights: .*non-negative"),
        ({"aggregate": "weights", "weights": [0, 0]}, r"teacher\.weights: at least one weight must be positive"),
        ({"weights": [1, 1]}, r"teacher\.weights: only used with aggregate: weights"),
        ({"drop": 1.0}, r"teacher\.drop: "),
        ({"drop": -0.1}, r"teacher\.drop: "),
        ({"aggregate": "tag", "drop": 0.2}, r"teacher\.drop: aggregate: tag"),
        ({"aggregate": "median"}, r"teacher\.aggregate: "),
        ({"standardize": "zca"}, r"teacher\.standardize: "),
        ({"gate": 0.1}, r"teacher\.gate: unknown key"),
    ],
)
def test_recipe_validation_names_the_key(teacher: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as err:
        validate(recipe(**teacher))
    assert "\n" not in str(err.value)


def test_a_valid_recipe_section() -> None:
    cfg = validate(recipe(aggregate="weights", weights=[1, 3], drop=0.25, standardize="phi_s")).teacher
    assert type(cfg) is Ensemble.Config
    assert cfg.weights == [1.0, 3.0] and cfg.drop == 0.25 and cfg.standardize_samples == 2048
    assert [m.kind for m in cfg.members] == ["live", "live"]
    assert all(f.description for name, f in Ensemble.Config.model_fields.items() if name != "kind")


def toy_bundle() -> DataBundle:
    g = torch.Generator().manual_seed(0)
    train = ArrayDataset(torch.randn(40, 6, generator=g), torch.randint(4, (40,), generator=g))
    test = ArrayDataset(torch.randn(10, 6, generator=g), torch.randint(4, (10,), generator=g), split="test")
    return DataBundle(train, None, test, 4, (6,), ["a", "b", "c", "d"], "toy", "toy")


def test_from_recipe_builds_members_from_their_checkpoints(tmp_path: Path) -> None:
    from kdforge.strategies.provision import Provision

    bundle = toy_bundle()
    sections, networks = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = build_model("mlp", 4, (6,), hidden=(8,))
        save_model(net, tmp_path / f"m{seed}.safetensors")
        networks.append(net.eval())
        sections.append(
            {"model": {"name": "mlp", "params": {"hidden": [8]}}, "checkpoint": str(tmp_path / f"m{seed}.safetensors")}
        )
    tree = recipe(standardize="phi_s", standardize_samples=32)
    tree["teacher"]["members"] = sections
    cfg = validate(tree)
    ensemble, info = kdforge.TEACHERS.get("ensemble").from_recipe(cfg.teacher, Provision(cfg, bundle))
    assert isinstance(ensemble, Ensemble)
    assert info["kind"] == "ensemble" and info["aggregate"] == "mean" and len(info["members"]) == 2
    assert info["members"][0]["checkpoint"] == sections[0]["checkpoint"]
    x = bundle.test.inputs
    out = ensemble.signals({"input": x}, Needs(teacher_logits=True, teacher_features=("1:2",)))
    np.testing.assert_allclose(out.logits.logits.numpy(), np.log(probs(networks, x).mean(0)), atol=1e-5)
    with torch.no_grad():
        hidden = networks[1][:3]  # the MLP is Flatten, Linear, ReLU, Linear: '2' is the hidden activation
        stats = fit(hidden(bundle.train.inputs[:32]))  # standardize_samples: the first 32 training samples
        assert torch.allclose(out.features["1:2"], apply(stats, hidden(x)), atol=1e-5)


def test_from_recipe_needs_a_build_with_members() -> None:
    class Plain:
        recipe = None
        bundle = None
        signals_needed = True

    cfg = validate(recipe()).teacher
    with pytest.raises(ConfigError, match="cannot provide member networks"):
        Ensemble.from_recipe(cfg, Plain())
