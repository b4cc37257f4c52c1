"""The pieces the teaching strategies are built from: strategy sections, label-only pairs, student views, stateful
terms, CWTM, mixup and the generated term sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import kdforge.runner  # noqa: F401  (fills the strategy registry)
from kdforge import objective
from kdforge.data.mix import Mixup
from kdforge.engine.distiller import Distiller
from kdforge.errors import ConfigError
from kdforge.recipe import dump, validate
from kdforge.strategies.common import per_student
from kdforge.strategies.mutual import peer_terms


def _net(seed: int, d: int = 6, c: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, c))


def _batch(n: int = 5, d: int = 6, c: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input": torch.randn(n, d, generator=g),
        "input@strong": torch.randn(n, d, generator=g),
        "label": torch.randint(0, c, (n,), generator=g),
        "index": torch.arange(n),
    }


# -- strategy sections -------------------------------------------------------------------------------------------


def test_strategy_name_is_shorthand_and_dumps_back_bare() -> None:
    recipe = validate({"student": {"name": "mlp"}, "strategy": "mutual"})
    assert recipe.strategy.name == "mutual" and recipe.strategy.count == 2
    written = yaml.safe_load(dump(recipe))["strategy"]
    assert written["name"] == "mutual" and written["count"] == 2 and written["mimic"]["objective"] == "kd"
    plain = validate({"student": {"name": "mlp"}})
    assert yaml.safe_load(dump(plain))["strategy"] == "offline"
    again = validate(yaml.safe_load(dump(recipe)))
    assert again.strategy == recipe.strategy


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"name": "born_again", "generations": 0}, "strategy.generations: Input should be greater than or equal to 1"),
        (
            {"name": "born_again", "generationz": 2},
            "strategy.generationz: unknown key; allowed keys: name, generations",
        ),
        ({"name": "assistant", "chain": []}, "strategy.chain: empty: name at least one assistant model"),
        ({"name": "mean_teacher", "labelled_fraction": 1.0}, "strategy.labelled_fraction: 1.0 leaves no unlabeled"),
        ({"name": "mutual", "count": 1}, "strategy.count: Input should be greater than or equal to 2"),
    ],
)
def test_strategy_sections_are_checked_by_their_own_schema(section: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate({"student": {"name": "mlp"}, "strategy": section})
    assert expected in str(err.value) and "\n" not in str(err.value)


# -- terms and pairs ---------------------------------------------------------------------------------------------


def test_pair_without_source_trains_that_student_alone() -> None:
    a, b = _net(0), _net(1)
    d = Distiller({"a": a, "b": b}, None, {"ce_b": {"objective": "ce", "pair": "b"}})
    d(_batch()).loss.backward()
    assert all(p.grad is None for p in a.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in b.parameters())


def test_pair_without_source_is_refused_for_a_teacher_term() -> None:
    with pytest.raises(ConfigError, match=r"objectives.kd_b.pair='b': this objective needs a source: 'b <- SOURCE'"):
        Distiller({"a": _net(0), "b": _net(1)}, None, {"kd_b": {"objective": "kd", "pair": "b"}})


def test_per_student_and_peer_terms() -> None:
    terms = per_student({"ce": 1.0, "kd": {"weight": 0.5, "T": 2}}, ["s0", "s1"], "teacher")
    assert terms["ce@s1"] == {"weight": 1.0, "objective": "ce", "pair": "s1"}
    assert terms["kd@s0"] == {"weight": 0.5, "T": 2, "objective": "kd", "pair": "s0 <- teacher"}
    peers = peer_terms(["a", "b", "c"], {"objective": "kd", "T": 1.0, "alpha": 1.0}, 1.0)
    assert sorted(peers) == sorted(f"mimic@{i}<-{j}" for i in "abc" for j in "abc" if i != j)
    assert all(t["weight"] == 0.5 for t in peers.values())  # each student's two peers share a weight of 1
    with pytest.raises(ConfigError, match=r"objectives\.kd: needs a teacher, but this recipe has none"):
        per_student({"kd": 1.0}, ["s0"], None)


def test_mutual_terms_match_dml_by_hand() -> None:
    a, b = _net(0), _net(1)
    batch = _batch()
    peers = peer_terms(["a", "b"], {"objective": "kd", "T": 1.0, "alpha": 1.0}, 1.0)
    terms = {**per_student({"ce": 1.0}, ["a", "b"], None), **peers}
    out = Distiller({"a": a, "b": b}, None, terms)(batch)
    la, lb = a(batch["input"]), b(batch["input"])
    y = batch["label"]

    def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:  # KL(p ‖ q), batch mean
        p = p_logits.softmax(-1)
        return (p * (p.log() - q_logits.log_softmax(-1))).sum(-1).mean()

    expected = nn.functional.cross_entropy(la, y) + nn.functional.cross_entropy(lb, y) + kl(lb, la) + kl(la, lb)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


# -- views -------------------------------------------------------------------------------------------------------


def test_a_view_is_the_same_weights_on_the_other_input() -> None:
    net = _net(0)
    batch = _batch()
    terms = {"ce": 1.0, "c": {"objective": "consistency", "pair": "student@strong <- student"}}
    d = Distiller(net, None, terms, views=("strong",))
    out = d(batch)
    torch.testing.assert_close(out.outputs["student@strong"].logits, net(batch["input@strong"]))
    torch.testing.assert_close(out.outputs["student"].logits, net(batch["input"]))
    assert list(d.trainable()) == ["student"]  # a view is no module of its own: nothing extra to optimize or save


def test_a_missing_view_names_the_key() -> None:
    terms = {"c": {"objective": "consistency", "pair": "student@strong <- student"}}
    d = Distiller(_net(0), None, terms, views=("strong",))
    batch = {k: v for k, v in _batch().items() if k != "input@strong"}
    with pytest.raises(ConfigError, match=r"the batch has no 'input@strong'"):
        d(batch)


def test_unused_views_are_not_run() -> None:
    d = Distiller(_net(0), None, {"ce": 1.0}, views=("strong",))
    assert d.views == {}
    out = d({k: v for k, v in _batch().items() if k != "input@strong"})
    assert "student@strong" not in out.outputs


# -- stateful terms ----------------------------------------------------------------------------------------------


def test_a_logit_objective_state_is_passed_and_checkpointed() -> None:
    teacher = _net(9)
    terms = {"p": {"objective": "pseudo_label", "dynamic": "freematch", "ema": 0.5, "threshold": 0.95}}
    d = Distiller(_net(0), teacher, terms)
    assert d.term_state_dict() == {"p": {}}  # FreeMatch learns the class count at its first update
    batch = _batch()
    d(batch)
    state = d.term_state_dict()["p"]
    q = teacher(batch["input"]).softmax(-1).detach()
    # τ and p̃ start at 1/C and move halfway (ema 0.5) to the batch means.
    assert state["tau"] == pytest.approx(0.5 * 0.25 + 0.5 * float(q.max(-1).values.mean()), rel=1e-5)
    assert state["p.2"] == pytest.approx(0.5 * 0.25 + 0.5 * float(q[:, 2].mean()), rel=1e-5)
    other = Distiller(_net(0), teacher, terms)
    other.load_term_state_dict(d.term_state_dict())
    assert other.term_state_dict() == d.term_state_dict()


# -- CWTM ----------------------------------------------------------------------------------------------------------


def test_cwtm_golden_value_and_independent_formula() -> None:
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 1.0, 3.0]])
    t = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 1.0]])
    y = torch.tensor([0, 1, 2])
    value = objective("cwtm")(s, t, y)
    pt = np.exp(t.numpy()) / np.exp(t.numpy()).sum(1, keepdims=True)
    w = pt.max(1) / pt.max(1).sum()
    ls = s.numpy() - np.log(np.exp(s.numpy()).sum(1, keepdims=True))
    expected = float((w * -ls[np.arange(3), y.numpy()]).sum())
    assert float(value) == pytest.approx(expected, rel=1e-6)
    assert float(value) == pytest.approx(0.3095711, abs=1e-6)  # golden
    # Rows without a label (-100) get no weight; a uniform teacher gives plain CE.
    masked = objective("cwtm")(s, t, torch.tensor([0, -100, 2]))
    keep = [0, 2]
    w2 = pt.max(1)[keep] / pt.max(1)[keep].sum()
    assert float(masked) == pytest.approx(float((w2 * -ls[keep, [0, 2]]).sum()), rel=1e-6)
    flat = objective("cwtm")(s, torch.zeros_like(t), y)
    torch.testing.assert_close(flat, nn.functional.cross_entropy(s, y))


# -- mixup ---------------------------------------------------------------------------------------------------------


def test_mixup_is_reproducible_convex_and_label_free() -> None:
    x = torch.rand(16, 1, 4, 4)
    batch = {"input": x, "label": torch.zeros(16, dtype=torch.long), "index": torch.arange(100, 116)}
    one, two = Mixup(1.0, seed=3)(batch, 7), Mixup(1.0, seed=3)(batch, 7)
    torch.testing.assert_close(one["input"], two["input"])  # what a resumed run draws again
    assert not torch.equal(one["input"], Mixup(1.0, seed=3)(batch, 8)["input"])
    assert "label" not in one
    # Every mixed image lies between its two sources: min ≤ x' ≤ max pixel-wise over the batch.
    assert bool((one["input"] >= x.min() - 1e-6).all()) and bool((one["input"] <= x.max() + 1e-6).all())
    assert not torch.equal(one["input"], x)
    with pytest.raises(ConfigError, match=r"strategy.mixup needs real-valued inputs"):
        Mixup(1.0)({"input": torch.ones(2, 3, dtype=torch.long)}, 0)
    with pytest.raises(ConfigError, match=r"strategy.mixup=0"):
        Mixup(0.0)


# -- the ensemble as one network ------------------------------------------------------------------------------------


def test_an_ensemble_evaluates_as_one_network() -> None:
    from kdforge.teachers import Live
    from kdforge.teachers.ensemble import Ensemble

    nets = [_net(1), _net(2), _net(3)]
    x = _batch()["input"]
    mean = Ensemble([Live(n) for n in nets], aggregate="mean", drop=0.5)
    expected = torch.stack([n(x).softmax(-1) for n in nets]).mean(0).log()
    torch.testing.assert_close(mean.model(x), expected, rtol=1e-5, atol=1e-6)  # evaluation never drops members
    weighted = Ensemble([Live(n) for n in nets], aggregate="weights", weights=[1.0, 0.0, 3.0])
    expected = (0.25 * nets[0](x).softmax(-1) + 0.75 * nets[2](x).softmax(-1)).log()
    torch.testing.assert_close(weighted.model(x), expected, rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in mean.model.parameters()) == sum(p.numel() for n in nets for p in n.parameters())
