"""Relation objectives (sp, rkd, pkt, cc): golden values, float64 loop references, parity, errors, gradients."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from kdforge import Distiller
from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.models import build_model
from kdforge.objectives import objective
from kdforge.objectives.base import PairContext
from kdforge.objectives.relations import correlation_matrix
from kdforge.signals import FeatureSignal, StudentOutput, TeacherOutput

PARITY = Path(__file__).parent / "data" / "parity"
NAMES = ("sp", "rkd", "pkt", "cc")
FLAT = {"cc": {"embed": 0}}  # cc without its trainable heads: the relation itself


def pair_of(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None, connector: Any = None) -> PairContext:
    """A pair whose student recorded ``s`` at 's' and whose teacher recorded ``t`` at 't'."""
    return PairContext(
        StudentOutput(None, {"s": s}),
        TeacherOutput(features=FeatureSignal({"t": t})),
        attention_mask=mask,
        connector=connector,
    )


def loss(name: str, s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None, **params: Any) -> torch.Tensor:
    """The objective on one 's -> t' pair."""
    return objective(name, layers=["s -> t"], **{**FLAT.get(name, {}), **params}).compute(pair_of(s, t, mask))


def inputs(seed: int = 0, b: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """A student (b, 6) and a wider teacher (b, 9): relations need no connector between the widths."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, 6, generator=gen), torch.randn(b, 9, generator=gen)


# -- float64 references: explicit loops over pairs and triplets ------------------------------------------------------


def huber(x: float, y: float) -> float:
    d = abs(x - y)
    return 0.5 * d * d if d < 1 else d - 0.5


def ref_sp(s: np.ndarray, t: np.ndarray) -> float:
    b = len(s)

    def g(x: np.ndarray) -> list[list[float]]:
        rows = [[float(np.dot(x[i], x[j])) for j in range(b)] for i in range(b)]
        return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in rows]

    gs, gt = g(s), g(t)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def ref_rkd(s: np.ndarray, t: np.ndarray, w_d: float = 25.0, w_a: float = 50.0) -> float:
    b = len(s)

    def dist(x: np.ndarray) -> list[list[float]]:
        d = [[float(np.linalg.norm(x[i] - x[j])) if i != j else 0.0 for j in range(b)] for i in range(b)]
        mu = sum(d[i][j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
        return [[v / mu for v in row] for row in d]

    def cos(x: np.ndarray, i: int, j: int, k: int) -> float:
        if j == i or k == i:
            return 0.0  # no angle at x_i when a side has length 0
        u, v = x[j] - x[i], x[k] - x[i]
        return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))

    ds, dt = dist(s), dist(t)
    loss_d = sum(huber(ds[i][j], dt[i][j]) for i in range(b) for j in range(b)) / b**2
    triplets = list(itertools.product(range(b), repeat=3))
    loss_a = sum(huber(cos(s, *ijk), cos(t, *ijk)) for ijk in triplets) / b**3
    return w_d * loss_d + w_a * loss_a


def ref_pkt(s: np.ndarray, t: np.ndarray) -> float:
    b = len(s)

    def conditionals(x: np.ndarray) -> list[list[float]]:
        k = [[(np.dot(x[i], x[j]) / (np.linalg.norm(x[i]) * np.linalg.norm(x[j])) + 1) / 2 for j in range(b)]
             for i in range(b)]  # fmt: skip
        return [[v / sum(row) for v in row] for row in k]

    p, q = conditionals(t), conditionals(s)
    return sum(p[i][j] * math.log(p[i][j] / q[i][j]) for i in range(b) for j in range(b)) / b**2


def ref_cc(s: np.ndarray, t: np.ndarray, gamma: float = 0.4, max_p: int = 2) -> float:
    b = len(s)

    def psi(x: np.ndarray) -> list[list[float]]:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        series = [[sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * float(np.dot(x[i], x[j])) ** p
                       for p in range(max_p + 1)) for j in range(b)] for i in range(b)]  # fmt: skip
        return series

    ps, pt = psi(s), psi(t)
    return sum((pt[i][j] - ps[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


REFS = {"sp": ref_sp, "rkd": ref_rkd, "pkt": ref_pkt, "cc": ref_cc}
GOLDEN = {"sp": 0.10630358755588531, "rkd": 2.9421465396881104, "pkt": 0.019591739401221275, "cc": 0.022074127569794655}


@pytest.mark.parametrize("name", NAMES)
def test_golden_value(name: str) -> None:
    s, t = inputs()
    assert loss(name, s, t).item() == pytest.approx(GOLDEN[name], rel=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_matches_a_float64_loop_over_pairs_and_triplets(name: str) -> None:
    s, t = inputs(seed=1, b=6)
    expected = REFS[name](s.double().numpy(), t.double().numpy())
    assert loss(name, s, t).item() == pytest.approx(expected, rel=1e-4)


def test_rkd_terms_weigh_separately_and_can_be_switched_off() -> None:
    s, t = inputs(seed=2)
    a, b = s.double().numpy(), t.double().numpy()
    assert loss("rkd", s, t, angle=0.0).item() == pytest.approx(ref_rkd(a, b, 25.0, 0.0), rel=1e-4)
    assert loss("rkd", s, t, distance=0.0, angle=1.0).item() == pytest.approx(ref_rkd(a, b, 0.0, 1.0), rel=1e-4)
    # Two samples have one distance, which its mean normalizes to 1: even the distance term needs three.
    with pytest.raises(ShapeMismatchError, match="holds 2 sample"):
        loss("rkd", s[:2], t[:2], angle=0.0)


def test_cc_series_tends_to_the_gaussian_kernel_and_has_a_bilinear_form() -> None:
    x = torch.randn(5, 7, dtype=torch.float64)
    u = x / x.norm(dim=1, keepdim=True)
    exact = torch.exp(-0.4 * torch.cdist(u, u).pow(2))
    torch.testing.assert_close(correlation_matrix(x, "gaussian", 0.4, 12), exact, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(correlation_matrix(x, "gaussian", 0.4, 1), exact, atol=1e-3)  # P=1 is a rough fit
    torch.testing.assert_close(correlation_matrix(x, "bilinear"), u @ u.t())


@pytest.mark.parametrize("name", NAMES)
def test_relations_ignore_the_scale_of_either_network(name: str) -> None:
    s, t = inputs(seed=3)
    torch.testing.assert_close(loss(name, 7 * s, t), loss(name, s, t), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(loss(name, s, 0.1 * t), loss(name, s, t), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_padded_tokens_do_not_change_the_relations(name: str) -> None:
    gen = torch.Generator().manual_seed(4)
    s, t = torch.randn(4, 3, 5, generator=gen), torch.randn(4, 3, 8, generator=gen)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0]])
    noisy_s, noisy_t = s + 9 * (1 - mask).unsqueeze(-1), t - 5 * (1 - mask).unsqueeze(-1)
    torch.testing.assert_close(loss(name, noisy_s, noisy_t, mask), loss(name, s, t, mask), rtol=1e-5, atol=1e-7)
    zeroed = loss(name, s * mask.unsqueeze(-1), t * mask.unsqueeze(-1))
    torch.testing.assert_close(loss(name, s, t, mask), zeroed, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_the_student_feature(name: str) -> None:
    s, t = inputs(seed=5)
    s.requires_grad_(True)
    loss(name, s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_several_layer_pairs_average(name: str) -> None:
    (s1, t1), (s2, t2) = inputs(seed=6), inputs(seed=7)
    pair = PairContext(
        StudentOutput(None, {"a": s1, "b": s2}), TeacherOutput(features=FeatureSignal({"x": t1, "y": t2}))
    )
    both = objective(name, layers=["a -> x", "b -> y"], **FLAT.get(name, {})).compute(pair)
    torch.testing.assert_close(both, (loss(name, s1, t1) + loss(name, s2, t2)) / 2)


# -- parity with the reference implementations (fixtures from benchmarks/parity/relations.py) -------------------------


def fixture(name: str) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    data = json.loads((PARITY / f"{name}.json").read_text())
    return data, torch.tensor(data["inputs"]["student"]), torch.tensor(data["inputs"]["teacher"])


@pytest.mark.parametrize("name", ["sp", "rkd", "pkt"])
def test_parity_with_the_reference_code(name: str) -> None:
    data, s, t = fixture(name)
    assert loss(name, s, t, **data["params"]).item() == pytest.approx(data["value"], rel=1e-4)


def test_sp_differs_from_torchdistill_only_by_its_l1_row_normalization() -> None:
    data, s, t = fixture("sp")
    b = len(s)

    def g(x: torch.Tensor) -> torch.Tensor:
        gram = x.flatten(1) @ x.flatten(1).t()
        return gram / gram.abs().sum(dim=1, keepdim=True)  # SPKDLoss: normalize(G, 1) sets p=1, not dim=1

    l1 = ((g(t) - g(s)) ** 2).sum() / b**2
    assert data["other"]["class"] == "SPKDLoss"
    assert l1.item() == pytest.approx(data["other"]["value"], rel=1e-4)
    assert abs(data["other"]["value"] - data["value"]) > 0.05  # the paper's L2 rows give a different value


def test_cc_is_the_square_of_torchdistills_norm_times_b_squared() -> None:
    data, s, t = fixture("cc")
    ours = loss("cc", s, t, **data["params"]).item()
    # CCKDLoss: ‖ψ_s − ψ_t‖_F / b²; the paper: ‖ψ_s − ψ_t‖²_F / b² (the same ψ on these unit rows).
    assert ours == pytest.approx(len(s) ** 2 * data["value"] ** 2, rel=1e-4)


# -- errors ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_errors_name_the_layers(name: str) -> None:
    s, t = inputs()
    params = FLAT.get(name, {})
    with pytest.raises(ConfigError, match=rf"objectives\.{name}: the student returned no feature 'nope'"):
        objective(name, layers=["nope -> t"], **params).compute(pair_of(s, t))
    with pytest.raises(ShapeMismatchError, match=rf"objectives\.{name}: student 's' has 5 samples, teacher 't' has 4"):
        loss(name, s, t[:4])
    least = 3 if name == "rkd" else 2
    with pytest.raises(ShapeMismatchError, match=rf"'s' -> 't' holds 1 sample\(s\).*at least {least}"):
        loss(name, s[:1], t[:1])
    with pytest.raises(ConfigError, match=rf"objectives\.{name}\.layers='embedding' is resolved .* Distiller"):
        objective(name, **params).compute(pair_of(s, t))


def test_cc_checks_its_parameters() -> None:
    s, t = inputs()
    with pytest.raises(ConfigError, match=r"objectives\.cc\.max_p=-1"):
        loss("cc", s, t, max_p=-1)
    with pytest.raises(ConfigError, match="must be one of gaussian, bilinear"):
        objective("cc", kernel="rbf")
    with pytest.raises(ConfigError, match=r"objectives\.cc: embed=128 asks for embedding heads"):
        objective("cc", layers=["s -> t"]).compute(pair_of(s, t))


# -- through the Distiller -----------------------------------------------------------------------------------------


def mlps() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = build_model("mlp", 10, (1, 8, 8), hidden=(64,))
    student = build_model("mlp", 10, (1, 8, 8), hidden=(16,))
    return teacher, student


def test_rkd_on_the_embeddings_of_two_mlps_trains_without_a_connector() -> None:
    teacher, student = mlps()
    distiller = Distiller(student, teacher, {"ce": 1.0, "rkd": 1.0})
    head = len(student) - 1
    assert distiller.terms["rkd"].objective.params["layers"] == [f"{head}:input -> {len(teacher) - 1}:input"]
    gen = torch.Generator().manual_seed(1)
    batch = {"input": torch.randn(16, 1, 8, 8, generator=gen), "label": torch.randint(0, 10, (16,), generator=gen)}
    distiller.prepare(batch)
    assert "rkd" not in distiller.connectors
    optimizer = torch.optim.SGD(distiller.parameters_to_train(), lr=0.05)
    distiller.train()
    values = []
    for _ in range(4):
        out = distiller(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        values.append(float(out.terms["rkd"]))
    assert all(math.isfinite(v) for v in values) and values[-1] < values[0]


def test_cc_builds_trainable_heads_for_both_sides_that_export_drops() -> None:
    teacher, student = mlps()
    distiller = Distiller(student, teacher, {"cc": {"weight": 1.0, "embed": 12}})
    distiller.prepare({"input": torch.randn(8, 1, 8, 8)})
    heads = distiller.connectors["cc"][0]
    assert (heads.student.in_features, heads.teacher.in_features, heads.student.out_features) == (16, 64, 12)
    distiller.train()
    distiller({"input": torch.randn(8, 1, 8, 8)}).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())
    assert "connector.cc" in distiller.trainable()
    assert distiller.export() is student


def test_a_missing_module_fails_on_the_first_batch_naming_it() -> None:
    teacher, student = mlps()
    batch = {"input": torch.randn(4, 1, 8, 8)}
    with pytest.raises(ConfigError, match="no module 'layer9'"):
        Distiller(student, teacher, {"sp": {"layers": ["layer9 -> 2"]}}).prepare(batch)
    distiller = Distiller(student, teacher, {"sp": {"layers": ["2 -> layer9"]}})
    distiller.prepare(batch)
    with pytest.raises(ConfigError, match="no module 'layer9'"):  # the teacher's recorder attaches on its first run
        distiller(batch)
