"""Feature-map objectives (AT, NST, FSP) and the ND loss: pinned values, independent computations, reference parity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdforge import Distiller
from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.models import build_model
from kdforge.models.stages import feature_stages
from kdforge.objectives import objective
from kdforge.objectives.attention_maps import attention_map, fsp_matrix
from kdforge.objectives.base import BuildContext, PairContext
from kdforge.objectives.nd import ClassMeans, class_means
from kdforge.signals import FeatureSignal, StudentOutput, TeacherOutput

PARITY = Path(__file__).parent / "data" / "parity"
REL = {"rtol": 1e-4, "atol": 1e-7}


def seeded(seed: int, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    """Standard-normal tensors from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for shape in shapes]


def pair_of(
    student: dict[str, torch.Tensor],
    teacher: dict[str, torch.Tensor],
    labels: torch.Tensor | None = None,
    connector: Any = None,
    mask: torch.Tensor | None = None,
) -> PairContext:
    """A PairContext holding these features (logits are not read by these objectives)."""
    batch = next(iter(student.values())).shape[0]
    out = StudentOutput(logits=torch.zeros(batch, 4), features=student)
    return PairContext(
        out, TeacherOutput(features=FeatureSignal(teacher)), labels, connector=connector, attention_mask=mask
    )


def value(name: str, pair: PairContext, **params: Any) -> torch.Tensor:
    """The objective ``name`` with ``params`` on one pair."""
    return objective(name, **params).compute(pair)


def fixture(name: str) -> dict[str, Any]:
    """A parity fixture written by benchmarks/parity/maps.py."""
    return json.loads((PARITY / f"{name}.json").read_text())


def tensors(inputs: dict[str, Any], side: str) -> dict[str, torch.Tensor]:
    """The fixture's inputs of one side, as float32 tensors by name."""
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in inputs.items() if k.startswith(side)}


TWO = ["s0 -> t0", "s1 -> t1"]


def two_pairs(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A student map larger than its teacher's, then a teacher map larger than its student's; widths differ."""
    s0, s1, t0, t1 = seeded(seed, (2, 3, 6, 6), (2, 4, 3, 3), (2, 5, 3, 3), (2, 2, 6, 6))
    return {"s0": s0, "s1": s1}, {"t0": t0, "t1": t1}


def block_mean(x: np.ndarray, size: int) -> np.ndarray:
    """(B, C, H, W) → (B, C, size, size) by averaging equal square blocks (adaptive pooling when size divides H)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


def common(s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both maps at the smaller side length."""
    size = min(s.shape[2], t.shape[2])
    return block_mean(s, size), block_mean(t, size)


# -- AT ---------------------------------------------------------------------------------------------------------------


def test_at_golden_value() -> None:
    s, t = two_pairs(0)
    got = value("at", pair_of(s, t), layers=TWO)
    assert got.item() == pytest.approx(0.09018570929765701, rel=1e-4)


def test_at_matches_an_explicit_loop_over_samples_and_positions() -> None:
    s, t = two_pairs(1)
    expected = []
    for i in range(2):
        a, b = common(s[f"s{i}"].numpy().astype(np.float64), t[f"t{i}"].numpy().astype(np.float64))
        total, count = 0.0, 0
        for n in range(a.shape[0]):
            q_s = (a[n] ** 2).mean(0).ravel()
            q_t = (b[n] ** 2).mean(0).ravel()
            for k in range(q_s.size):
                total += (q_s[k] / np.sqrt((q_s**2).sum()) - q_t[k] / np.sqrt((q_t**2).sum())) ** 2
                count += 1
        expected.append(total / count)
    got = value("at", pair_of(s, t), layers=TWO)
    torch.testing.assert_close(got, torch.tensor(np.mean(expected), dtype=torch.float32), **REL)


def test_at_p_takes_the_absolute_value_to_the_power_p() -> None:
    s, t = two_pairs(2)
    flipped = {k: -v for k, v in s.items()}
    # |F|^p: an odd p still sees a negated map as the same attention.
    assert value("at", pair_of(s, t), layers=TWO, p=3) == value("at", pair_of(flipped, t), layers=TWO, p=3)
    assert value("at", pair_of(s, t), layers=TWO, p=3) != value("at", pair_of(s, t), layers=TWO, p=2)


def test_at_parity_with_mdistiller_and_torchdistill() -> None:
    data = fixture("at")
    s, t = tensors(data["inputs"], "student"), tensors(data["inputs"], "teacher")
    ours = value("at", pair_of(s, t), layers=data["params"]["layers"], p=data["params"]["p"])
    # mdistiller sums the pairs; we average them (the weight carries the number of pairs).
    assert ours.item() * len(data["params"]["layers"]) == pytest.approx(data["value"], rel=1e-4)
    code, paper = data["other"]
    s, t = tensors(code["inputs"], "student")["student_0"], tensors(code["inputs"], "teacher")["teacher_0"]
    ours = value("at", pair_of({"s": s}, {"t": t}), layers=["s -> t"])
    assert code["params"]["mode"] == "code" and ours.item() == pytest.approx(code["value"], rel=1e-4)
    # torchdistill's mode='paper' (eq. 2): the per-sample L2 norm of the map difference, averaged over samples.
    flat = lambda x: x.flatten(2)  # noqa: E731
    paper_value = (attention_map(flat(s)) - attention_map(flat(t))).norm(dim=1).mean()
    assert paper["params"]["mode"] == "paper" and paper_value.item() == pytest.approx(paper["value"], rel=1e-4)


def test_at_on_tokens_skips_padding() -> None:
    s, t = seeded(3, (2, 5, 4), (2, 5, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    got = value("at", pair_of({"s": s}, {"t": t}, mask=mask), layers=["s -> t"])
    noisy_s, noisy_t = s.clone(), t.clone()
    noisy_s[1, 3:] += 100.0
    noisy_t[1, 3:] -= 50.0
    assert torch.equal(got, value("at", pair_of({"s": noisy_s}, {"t": noisy_t}, mask=mask), layers=["s -> t"]))
    total = 0.0
    for n, length in enumerate((5, 3)):
        q_s, q_t = s[n, :length].pow(2).mean(-1), t[n, :length].pow(2).mean(-1)
        total += (q_s / q_s.norm() - q_t / q_t.norm()).pow(2).sum().item()
    assert got.item() == pytest.approx(total / 8, rel=1e-4)


def test_at_errors_name_the_layers() -> None:
    s, t = two_pairs(4)
    with pytest.raises(ConfigError, match="the student returned no feature 's9'"):
        value("at", pair_of(s, t), layers=["s9 -> t0"])
    with pytest.raises(ConfigError, match="the teaching side returned no feature 't9'"):
        value("at", pair_of(s, t), layers=["s0 -> t9"])
    with pytest.raises(ShapeMismatchError, match=r"objectives.at: student 's0' \(2, 3, 6, 6\) vs teacher 'x'"):
        value("at", pair_of(s, {"x": torch.randn(2, 5, 7)}), layers=["s0 -> x"])
    with pytest.raises(ConfigError, match=r"objectives.at: needs a layer map"):
        value("at", pair_of(s, t))


def test_at_and_nst_send_gradients_to_the_student() -> None:
    s, t = two_pairs(5)
    for name in ("at", "nst"):
        leaves = {k: v.clone().requires_grad_(True) for k, v in s.items()}
        value(name, pair_of(leaves, t), layers=TWO).backward()
        assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in leaves.values()), name


def test_at_end_to_end_training_lowers_the_loss() -> None:
    torch.manual_seed(0)
    teacher = build_model("cnn", 10, (1, 28, 28), widths=(16, 32))
    student = build_model("cnn", 10, (1, 28, 28), widths=(8, 16))
    distiller = Distiller(student, teacher, {"at": {"weight": 1000.0, "layers": "uniform"}})
    stages_s, stages_t = feature_stages(student), feature_stages(teacher)
    assert distiller.terms["at"].objective.params["layers"] == [
        f"{a} -> {b}" for a, b in zip(stages_s, stages_t, strict=True)
    ]
    batch = {"input": torch.randn(4, 1, 28, 28), "label": torch.randint(0, 10, (4,))}
    distiller.prepare(batch)
    distiller.train()
    optimizer = torch.optim.Adam(distiller.parameters_to_train(), lr=1e-2)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        out = distiller(batch)
        out.loss.backward()
        optimizer.step()
        losses.append(out.terms["at"].item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]


# -- NST --------------------------------------------------------------------------------------------------------------


def test_nst_golden_value() -> None:
    s, t = two_pairs(6)
    assert value("nst", pair_of(s, t), layers=TWO).item() == pytest.approx(0.5687675476074219, rel=1e-4)


def test_nst_matches_the_papers_mmd_written_with_loops() -> None:
    s, t = two_pairs(7)
    per_pair = []
    for i in range(2):
        a, b = common(s[f"s{i}"].numpy().astype(np.float64), t[f"t{i}"].numpy().astype(np.float64))
        mmd = []
        for n in range(a.shape[0]):
            f_s = [c.ravel() / np.linalg.norm(c) for c in a[n]]
            f_t = [c.ravel() / np.linalg.norm(c) for c in b[n]]
            k = lambda x, y: float(x @ y) ** 2  # noqa: E731  (polynomial kernel, d=2, c=0)
            tt = sum(k(x, y) for x in f_t for y in f_t) / len(f_t) ** 2
            ss = sum(k(x, y) for x in f_s for y in f_s) / len(f_s) ** 2
            st = sum(k(x, y) for x in f_s for y in f_t) / (len(f_s) * len(f_t))
            mmd.append(tt + ss - 2 * st)
        per_pair.append(np.mean(mmd))
    got = value("nst", pair_of(s, t), layers=TWO)
    torch.testing.assert_close(got, torch.tensor(np.mean(per_pair), dtype=torch.float32), **REL)


def test_nst_parity_with_mdistiller() -> None:
    data = fixture("nst")
    s, t = tensors(data["inputs"], "student"), tensors(data["inputs"], "teacher")
    ours = value("nst", pair_of(s, t), layers=data["params"]["layers"])
    assert ours.item() * len(data["params"]["layers"]) == pytest.approx(data["value"], rel=1e-4)  # theirs sums


def test_nst_errors_name_the_layers() -> None:
    s, t = two_pairs(8)
    with pytest.raises(ConfigError, match="no feature 's7'"):
        value("nst", pair_of(s, t), layers=["s7 -> t0"])
    with pytest.raises(ShapeMismatchError, match=r"student 's0' \(2, 3, 6, 6\) vs teacher 'x' \(3, 5, 3, 3\)"):
        value("nst", pair_of(s, {"x": torch.randn(3, 5, 3, 3)}), layers=["s0 -> x"])


def test_nst_and_fsp_on_tokens_skip_padding() -> None:
    a, b, x, y = seeded(9, (2, 5, 3), (2, 5, 4), (2, 5, 3), (2, 5, 4))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    noisy = [v.clone() for v in (a, b, x, y)]
    for v in noisy:
        v[1, 3:] = 7.0
    for name, layers in [("nst", ["a -> x"]), ("fsp", ["a, b -> x, y"])]:
        masked = value(name, pair_of({"a": a, "b": b}, {"x": x, "y": y}, mask=mask), layers=layers)
        student, teacher = {"a": noisy[0], "b": noisy[1]}, {"x": noisy[2], "y": noisy[3]}
        assert torch.equal(masked, value(name, pair_of(student, teacher, mask=mask), layers=layers)), name
        # Both are batch means of per-sample values: the padded sample alone, trimmed, gives its share.
        full = value(name, pair_of({"a": a[:1], "b": b[:1]}, {"x": x[:1], "y": y[:1]}), layers=layers)
        cut = value(name, pair_of({"a": a[1:, :3], "b": b[1:, :3]}, {"x": x[1:, :3], "y": y[1:, :3]}), layers=layers)
        torch.testing.assert_close(masked, (full + cut) / 2, **REL)


# -- FSP --------------------------------------------------------------------------------------------------------------

FSP_MAP = ["a, b -> x, y"]


def fsp_inputs(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Student (6×6 then 3×3) and teacher (2×2 then 4×4) maps with the same channels (3, then 4)."""
    a, b, x, y = seeded(seed, (2, 3, 6, 6), (2, 4, 3, 3), (2, 3, 2, 2), (2, 4, 4, 4))
    return {"a": a, "b": b}, {"x": x, "y": y}


def test_fsp_golden_value() -> None:
    s, t = fsp_inputs(0)
    assert value("fsp", pair_of(s, t), layers=FSP_MAP).item() == pytest.approx(0.1088423952460289, rel=1e-4)


def test_fsp_matches_the_papers_gram_written_with_loops() -> None:
    s, t = fsp_inputs(1)

    def gram(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        first, second = common(first, second)
        b, c1, h, w = first.shape
        g = np.zeros((b, c1, second.shape[1]))
        for n in range(b):
            for i in range(c1):
                for j in range(second.shape[1]):
                    g[n, i, j] = sum(first[n, i, p, q] * second[n, j, p, q] for p in range(h) for q in range(w)) / (
                        h * w
                    )
        return g

    as64 = lambda x: x.numpy().astype(np.float64)  # noqa: E731
    diff = gram(as64(s["a"]), as64(s["b"])) - gram(as64(t["x"]), as64(t["y"]))
    got = value("fsp", pair_of(s, t), layers=FSP_MAP)
    torch.testing.assert_close(got, torch.tensor((diff**2).mean(), dtype=torch.float32), **REL)


def test_fsp_parity_with_repdistiller_and_torchdistills_documented_difference() -> None:
    data = fixture("fsp")
    s, t = tensors(data["inputs"], "student"), tensors(data["inputs"], "teacher")
    layers = data["params"]["layers"]
    ours = value("fsp", pair_of(s, t), layers=layers)
    assert ours.item() * len(layers) == pytest.approx(data["value"], rel=1e-4)  # RepDistiller sums the pairs
    # torchdistill's FSPLoss: max pooling, and Σ over (sample, column) of the column norm of G_s − G_t, over the batch.
    (other,) = data["other"]

    def gram_max(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        size = (min(first.shape[2], second.shape[2]), min(first.shape[3], second.shape[3]))
        return fsp_matrix(F.adaptive_max_pool2d(first, size).flatten(2), F.adaptive_max_pool2d(second, size).flatten(2))

    total = 0.0
    for i in range(2):
        g_s = gram_max(s[f"student_{i}"], s[f"student_{i + 1}"])
        g_t = gram_max(t[f"teacher_{i}"], t[f"teacher_{i + 1}"])
        total += (g_s - g_t).norm(dim=1).sum().item() / g_s.shape[0]
    assert total == pytest.approx(other["value"], rel=1e-4)


def test_fsp_layer_map_forms_and_errors() -> None:
    s, t = fsp_inputs(2)
    written = value("fsp", pair_of(s, t), layers=[{"student": ["a", "b"], "teacher": ["x", "y"]}])
    assert torch.equal(written, value("fsp", pair_of(s, t), layers=FSP_MAP))
    with pytest.raises(ConfigError, match=r"objectives.fsp.layers: 'a -> x' is not an FSP pair"):
        value("fsp", pair_of(s, t), layers=["a -> x"])
    with pytest.raises(ConfigError, match="the student returned no feature 'c'"):
        value("fsp", pair_of(s, t), layers=["a, c -> x, y"])
    wide = {"x": torch.randn(2, 5, 2, 2), "y": t["y"]}
    with pytest.raises(ShapeMismatchError, match=r"student 'a, b' FSP matrix \(3, 4\) vs teacher 'x, y' \(5, 4\)"):
        value("fsp", pair_of(s, wide), layers=FSP_MAP)


def test_fsp_gradients_reach_the_student() -> None:
    s, t = fsp_inputs(3)
    leaves = {k: v.clone().requires_grad_(True) for k, v in s.items()}
    value("fsp", pair_of(leaves, t), layers=FSP_MAP).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in leaves.values())


def test_fsp_uniform_map_pairs_consecutive_stages_and_trains_its_connectors() -> None:
    torch.manual_seed(0)
    student = build_model("cnn", 10, (1, 28, 28), widths=(8, 16))
    deeper = build_model("cnn", 10, (1, 28, 28), widths=(8, 16, 16))
    batch = {"input": torch.randn(4, 1, 28, 28)}
    same = Distiller(student, deeper, {"fsp": {"layers": "uniform"}})
    (s_a, s_b), (t_a, _, t_c) = feature_stages(student), feature_stages(deeper)
    assert same.terms["fsp"].objective.params["layers"] == [f"{s_a}, {s_b} -> {t_a}, {t_c}"]
    same.prepare(batch)
    assert torch.isfinite(same(batch).loss) and "fsp" not in same.connectors
    wide = build_model("cnn", 10, (1, 28, 28), widths=(16, 32))
    unmapped = Distiller(student, wide, {"fsp": {"layers": "uniform"}})
    unmapped.prepare(batch)
    with pytest.raises(ShapeMismatchError, match="connector: linear"):
        unmapped(batch)
    mapped = Distiller(student, wide, {"fsp": {"layers": "uniform", "connector": "linear"}})
    mapped.prepare(batch)
    mapped(batch).loss.backward()
    params = list(mapped.connectors["fsp"].parameters())
    assert params and all(p.grad is not None for p in params)
    assert student[0].weight.grad is not None
    with pytest.raises(ConfigError, match="FSP pairs consecutive stages"):
        Distiller(student, wide, {"fsp": {"layers": "embedding"}})
    with pytest.raises(ConfigError, match="FSP needs at least 2"):
        Distiller(student, wide, {"fsp": {"layers": "last"}})


# -- ND ---------------------------------------------------------------------------------------------------------------


def nd_pair(
    s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, module: ClassMeans
) -> tuple[PairContext, dict[str, Any]]:
    """An ND pair over embeddings 'e_s' → 'e_t', with its class-mean module."""
    return pair_of({"e_s": s}, {"e_t": t}, labels, connector=module), {"layers": ["e_s -> e_t"]}


def built(s: torch.Tensor, t: torch.Tensor, classes: int = 3, **params: Any) -> ClassMeans:
    """The module ND's build rule makes for these embeddings."""
    student = StudentOutput(logits=torch.zeros(s.shape[0], classes), features={"e_s": s})
    ctx = BuildContext("nd", student, TeacherOutput(features=FeatureSignal({"e_t": t})), num_classes=classes)
    module = class_means({"layers": ["e_s -> e_t"], "connector": "linear", "centers": "running", **params}, ctx)
    assert isinstance(module, ClassMeans)
    return module


def authors_nd(s: torch.Tensor, t: torch.Tensor, centers: dict[str, list[float]], labels: torch.Tensor) -> float:
    """DirectNormLoss.project_center of the authors' CIFAR/utils.py, per sample, divided by the batch size."""
    loss = 0.0
    for s_i, t_i, y in zip(s, t, labels, strict=True):
        center = torch.tensor(centers[str(int(y))])
        e_c = center / center.norm(p=2)
        max_norm = max(s_i.norm(p=2), t_i.norm(p=2))
        loss += float(1 - torch.dot(s_i, e_c) / max_norm)
    return loss / len(labels)


def test_nd_golden_value_and_running_class_means() -> None:
    s, t = seeded(0, (6, 5), (6, 5))
    labels = torch.tensor([0, 1, 2, 0, 1, 0])
    module = built(s, t)
    pair, params = nd_pair(s, t, labels, module)
    got = value("nd", pair, **params)
    assert got.item() == pytest.approx(0.7236434817314148, rel=1e-4)
    for c in range(3):
        torch.testing.assert_close(module.means[c], t[labels == c].mean(0), **REL)
    assert module.counts.tolist() == [3, 2, 1]


def test_nd_matches_the_authors_per_sample_formula() -> None:
    (t0,) = seeded(1, (8, 4))
    s, t = seeded(2, (8, 4), (8, 4))
    s = s * torch.linspace(0.2, 3.0, 8)[:, None]  # some student norms above the teacher's, some below
    labels0, labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), torch.tensor([3, 3, 1, 0, 2, 1, 0, 0])
    module = built(s, t, classes=4)
    value("nd", *nd_pair(torch.zeros(8, 4), t0, labels0, module)[:1], layers=["e_s -> e_t"])  # a first batch
    centers = {str(c): torch.cat([t0[labels0 == c], t[labels == c]]).mean(0).tolist() for c in range(4)}
    pair, params = nd_pair(s, t, labels, module)
    got = value("nd", pair, **params)
    assert got.item() == pytest.approx(authors_nd(s, t, centers, labels), rel=1e-4)


def test_nd_precomputed_centers_from_the_authors_json(tmp_path: Path) -> None:
    s, t = seeded(3, (5, 4), (5, 4))
    labels = torch.tensor([1, 0, 1, 2, 2])
    (means,) = seeded(4, (3, 4))
    centers = {str(c): means[c].tolist() for c in range(3)}
    path = tmp_path / "center_emb_train.json"
    path.write_text(json.dumps(centers))
    module = built(s, t, centers=str(path))
    pair, params = nd_pair(s, t, labels, module)
    assert value("nd", pair, **params).item() == pytest.approx(authors_nd(s, t, centers, labels), rel=1e-4)
    torch.testing.assert_close(module.means, means)  # fixed: the batch did not move them
    torch.save(means, tmp_path / "means.pt")
    torch.testing.assert_close(built(s, t, centers=str(tmp_path / "means.pt")).means, means)
    path.write_text(json.dumps({"0": centers["0"], "1": centers["1"]}))
    with pytest.raises(ConfigError, match="no mean for class 2 of 3"):
        built(s, t, centers=str(path))
    path.write_text(json.dumps([[0.0] * 3] * 3))
    with pytest.raises(ShapeMismatchError, match=r"shape \(3, 3\); expected \(3, 4\)"):
        built(s, t, centers=str(path))
    with pytest.raises(ConfigError, match=r"objectives\.nd\.centers='nope\.json': no such file"):
        built(s, t, centers="nope.json")


def test_nd_projects_a_narrower_student_and_sends_gradients_to_both() -> None:
    s, t = seeded(5, (6, 3), (6, 5))
    s.requires_grad_(True)
    module = built(s.detach(), t)
    assert isinstance(module.projector, torch.nn.Linear) and module.projector.out_features == 5
    pair, params = nd_pair(s, t, torch.tensor([0, 1, 2, 0, 1, 2]), module)
    value("nd", pair, **params).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.projector.parameters())
    assert module.means.grad_fn is None and not module.means.requires_grad


def test_nd_skips_unlabelled_samples_and_does_not_learn_means_in_eval() -> None:
    s, t = seeded(6, (4, 4), (4, 4))
    module = built(s, t)
    pair, params = nd_pair(s, t, torch.tensor([1, -100, 1, -100]), module)
    got = value("nd", pair, **params)
    module2 = built(s, t)
    pair2, _ = nd_pair(s[[0, 2]], t[[0, 2]], torch.tensor([1, 1]), module2)
    assert got.item() == pytest.approx(value("nd", pair2, **params).item(), rel=1e-6)
    assert module.counts.tolist() == [0, 2, 0]
    module.eval()
    value("nd", *nd_pair(s, t, torch.tensor([0, 0, 2, 2]), module)[:1], **params)
    assert module.counts.tolist() == [0, 2, 0]
    none = value("nd", *nd_pair(s, t, torch.full((4,), -100), built(s, t))[:1], **params)
    assert none.item() == 0.0


def test_nd_errors_name_the_layers() -> None:
    s, t = seeded(7, (4, 4), (4, 6))
    with pytest.raises(ShapeMismatchError, match=r"objectives.nd: student 'e_s' \(4, 4\) vs teacher 'e_t' \(4, 6\)"):
        built(s, t, connector="identity")
    with pytest.raises(ShapeMismatchError, match=r"teacher 'e_t' \(4, 6, 2, 2\): expected the teacher's embedding"):
        built(s, torch.randn(4, 6, 2, 2))
    with pytest.raises(ConfigError, match="ND compares one embedding pair, got 2"):
        student = StudentOutput(logits=torch.zeros(4, 3), features={"e_s": s})
        ctx = BuildContext("nd", student, TeacherOutput(features=FeatureSignal({"e_t": t})), num_classes=3)
        class_means({"layers": ["e_s -> e_t", "e_s -> e_t"]}, ctx)
    with pytest.raises(ConfigError, match="the student returned no feature 'e_x'"):
        value("nd", pair_of({"e_s": s}, {"e_t": t}, torch.zeros(4, dtype=torch.long)), layers=["e_x -> e_t"])


def test_nd_in_a_distiller_checkpoints_its_class_means_and_resumes_exactly() -> None:
    torch.manual_seed(0)
    teacher = build_model("cnn", 10, (1, 28, 28), widths=(16, 32))

    def make() -> Distiller:
        torch.manual_seed(1)
        student = build_model("cnn", 10, (1, 28, 28), widths=(8, 16))
        return Distiller(student, teacher, {"ce": 1.0, "nd": 2.0})

    batches = [{"input": torch.randn(6, 1, 28, 28), "label": torch.randint(0, 10, (6,))} for _ in range(3)]
    first = make()
    # The embeddings before the dropout in front of each classifier.
    assert first.terms["nd"].objective.params["layers"] == [f"{len(first.student) - 2}:input -> 16:input"]
    first.prepare(batches[0])
    for batch in batches[:2]:
        first(batch).loss.backward()
    module = first.connectors["nd"]
    assert isinstance(module, ClassMeans) and int(module.counts.sum()) == 12
    saved = {k: v.state_dict() for k, v in first.trainable().items()}
    assert "connector.nd" in saved and {"means", "counts"} <= set(saved["connector.nd"])
    again = make()
    again.prepare(batches[0])
    for name, mod in again.trainable().items():
        mod.load_state_dict(saved[name])
    assert torch.equal(again(batches[2]).terms["nd"], first(batches[2]).terms["nd"])
    assert torch.equal(again.connectors["nd"].means, first.connectors["nd"].means)
