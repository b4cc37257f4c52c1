"""Objectives with built modules and state: VID (regressors), CRD (embedding heads + memory banks), ReviewKD (ABFs)."""

from __future__ import annotations

import copy
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
from kdforge.objectives.base import BuildContext, PairContext
from kdforge.objectives.crd import CRDModule, crd_contrast, draw_negatives
from kdforge.objectives.review import ReviewModule, review_loss
from kdforge.signals import FeatureSignal, Progress, StudentOutput, TeacherOutput

PARITY = Path(__file__).parent / "data" / "parity"


def _sides(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> tuple[StudentOutput, TeacherOutput]:
    return StudentOutput(None, student), TeacherOutput(features=FeatureSignal(teacher))


def _build(name: str, params: dict[str, Any], student: dict, teacher: dict, data_size: int | None = None) -> Any:
    """The objective bound to ``params`` and the module its ``build`` makes from these features."""
    bound = objective(name, **params)
    s, t = _sides(student, teacher)
    return bound, bound.spec.build(bound.params, BuildContext(name, s, t, None, data_size))


def _loss(bound: Any, module: Any, student: dict, teacher: dict, index: Any = None, step: int = 0) -> torch.Tensor:
    s, t = _sides(student, teacher)
    return bound.compute(PairContext(s, t, progress=Progress(step=step), connector=module, index=index))


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((PARITY / f"{name}.json").read_text())


def _tensor(value: Any, like: torch.Tensor | None = None) -> torch.Tensor:
    return torch.tensor(value, dtype=None if like is None else like.dtype)


def _assert_rel(ours: float, theirs: float) -> None:
    assert math.isclose(ours, theirs, rel_tol=1e-4), (ours, theirs)


# -- VID --------------------------------------------------------------------------------------------------------------

VID_LAYERS = ["a -> x", "b -> y"]


def _vid_features(seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    student = {"a": torch.randn(2, 4, 8, 8, generator=g), "b": torch.randn(2, 8, 2, 2, generator=g)}
    teacher = {"x": torch.randn(2, 6, 4, 4, generator=g), "y": torch.randn(2, 6, 4, 4, generator=g)}
    return student, teacher


def test_vid_golden_value_and_initial_variance() -> None:
    student, teacher = _vid_features()
    torch.manual_seed(0)
    bound, heads = _build("vid", {"layers": VID_LAYERS}, student, teacher)
    assert len(heads) == 2 and heads[0].regressor[2].in_channels == 6  # mid channels = the teacher's
    torch.testing.assert_close(heads[0].variance(), torch.full((6,), 5.0))
    assert _loss(bound, heads, student, teacher).item() == pytest.approx(1.745954990386963, rel=1e-4)


def _np_vid(head: Any, s: np.ndarray, t: np.ndarray) -> float:
    """The NLL written as log σ + (t − μ)²/(2σ²) with numpy: block-mean pooling, 1×1 convs as channel products."""

    def pool(x: np.ndarray, size: int) -> np.ndarray:
        b, c, h, w = x.shape
        return x.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))

    size = min(s.shape[2], t.shape[2])
    s, t = pool(s, size), pool(t, size)
    w = [head.regressor[i].weight.detach().numpy()[:, :, 0, 0].astype(np.float64) for i in (0, 2, 4)]
    h = np.maximum(np.einsum("oc,bchw->bohw", w[0], s), 0)
    h = np.maximum(np.einsum("oc,bchw->bohw", w[1], h), 0)
    mu = np.einsum("oc,bchw->bohw", w[2], h)
    var = np.log1p(np.exp(head.log_scale.detach().numpy().astype(np.float64))) + head.eps
    sigma = np.sqrt(var)[None, :, None, None]
    return float(np.mean(np.log(sigma) + (t - mu) ** 2 / (2 * sigma**2)))


def test_vid_matches_a_numpy_computation_of_the_gaussian_nll() -> None:
    student, teacher = _vid_features(1)
    bound, heads = _build("vid", {"layers": VID_LAYERS}, student, teacher)
    with torch.no_grad():
        for head in heads:
            head.log_scale.add_(torch.randn(6))
    expected = sum(
        _np_vid(head, student[s].double().numpy(), teacher[t].double().numpy())
        for head, (s, t) in zip(heads, [("a", "x"), ("b", "y")], strict=True)
    )
    torch.testing.assert_close(_loss(bound, heads, student, teacher).item(), expected, rtol=1e-5, atol=1e-6)


def test_vid_parity_with_mdistiller() -> None:
    fx = _fixture("vid")
    inp = fx["inputs"]
    student = {"a": _tensor(inp["student_0"]), "b": _tensor(inp["student_1"])}
    teacher = {"x": _tensor(inp["teacher_0"]), "y": _tensor(inp["teacher_1"])}
    params = {k: fx["params"][k] for k in ("eps", "init_pred_var", "mid_channels")}
    bound, heads = _build("vid", {"layers": VID_LAYERS, **params}, student, teacher)
    for i, head in enumerate(heads):
        head.load_state_dict({k: _tensor(inp[f"head_{i}.{k}"]) for k in head.state_dict()})
    _assert_rel(_loss(bound, heads, student, teacher).item(), fx["value"])


def test_vid_errors_name_the_layers() -> None:
    student, teacher = _vid_features()
    with pytest.raises(ConfigError, match="student returned no feature 'zz'"):
        _build("vid", {"layers": ["zz -> x"]}, student, teacher)
    tokens = {"a": torch.randn(2, 5, 4)}
    with pytest.raises(ShapeMismatchError, match=r"objectives\.vid: student 'a' \(2, 5, 4\) vs teacher 'x'"):
        _build("vid", {"layers": ["a -> x"]}, tokens, teacher)
    with pytest.raises(ConfigError, match="init_pred_var"):
        _build("vid", {"layers": VID_LAYERS, "init_pred_var": 0.0}, student, teacher)
    bound, heads = _build("vid", {"layers": VID_LAYERS}, student, teacher)
    wrong = {**teacher, "y": torch.randn(2, 7, 4, 4)}
    with pytest.raises(ShapeMismatchError, match=r"teacher 'y' .* built for 8 -> 6"):
        _loss(bound, heads, student, wrong)


def test_vid_gradients_reach_the_student_regressors_and_variances() -> None:
    student, teacher = _vid_features()
    student = {k: v.requires_grad_() for k, v in student.items()}
    bound, heads = _build("vid", {"layers": VID_LAYERS}, student, teacher)
    _loss(bound, heads, student, teacher).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in student.values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())


# -- CRD --------------------------------------------------------------------------------------------------------------

CRD = {"layers": ["s -> t"], "feat_dim": 8, "nce_k": 5}


def _crd_batch(seed: int, index: list[int]) -> tuple[dict, dict, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b = len(index)
    return {"s": torch.randn(b, 3, 2, 2, generator=g)}, {"t": torch.randn(b, 10, generator=g)}, torch.tensor(index)


def test_crd_golden_values_over_two_batches() -> None:
    student, teacher, index = _crd_batch(0, [3, 7, 0, 23])
    torch.manual_seed(0)
    bound, module = _build("crd", CRD, student, teacher, data_size=24)
    assert module.memory_s.shape == (24, 8) and module.nce_k == 5 and module.memory_s.dtype == torch.float32
    first = _loss(bound, module, student, teacher, index, step=5).item()
    student, teacher, index = _crd_batch(1, [3, 9, 12, 1])
    second = _loss(bound, module, student, teacher, index, step=6).item()
    assert first == pytest.approx(13.64693832397461, rel=1e-4)
    assert second == pytest.approx(17.868345260620117, rel=1e-4)


def _np_crd(state: dict, f_s: np.ndarray, f_t: np.ndarray, rows: np.ndarray, z: list[float] | None, n: int) -> Any:
    """CRD with explicit loops over anchors and rows: (loss, Z, updated banks); ``z`` None estimates it."""

    def embed(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
        v = x.reshape(len(x), -1) @ w.T + b
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    v_s = embed(state["embed_s.weight"], state["embed_s.bias"], f_s)
    v_t = embed(state["embed_t.weight"], state["embed_t.bias"], f_t)
    mem_s, mem_t = state["memory_s"].copy(), state["memory_t"].copy()
    scores = []
    for anchor, bank in ((v_s, mem_t), (v_t, mem_s)):
        scores.append(np.array([[math.exp(bank[r] @ anchor[i] / 0.07) for r in rows[i]] for i in range(len(rows))]))
    z = [float(s.mean() * n) for s in scores] if z is None else z
    k = rows.shape[1] - 1
    loss = 0.0
    for p in (scores[0] / z[0], scores[1] / z[1]):
        for i in range(len(rows)):
            loss -= math.log(p[i, 0] / (p[i, 0] + k / n + 1e-7))
            loss -= sum(math.log((k / n) / (p[i, j] + k / n + 1e-7)) for j in range(1, k + 1))
    loss /= len(rows)
    for i, row in enumerate(rows[:, 0]):
        for bank, v in ((mem_s, v_s), (mem_t, v_t)):
            moved = 0.5 * bank[row] + 0.5 * v[i]
            bank[row] = moved / np.linalg.norm(moved)
    return loss, z, mem_s, mem_t


def test_crd_matches_loops_over_anchors_and_negatives_and_updates_the_banks() -> None:
    student, teacher, index = _crd_batch(2, [5, 1, 17, 8, 11])
    bound, module = _build("crd", CRD, student, teacher, data_size=24)
    state = {k: v.double().numpy().copy() for k, v in module.state_dict().items()}
    negatives = draw_negatives(index, 24, 5, seed=0, step=3)
    rows = torch.cat([index[:, None], negatives], 1).numpy()
    loss, z, mem_s, mem_t = _np_crd(state, student["s"].double().numpy(), teacher["t"].double().numpy(), rows, None, 24)
    ours = _loss(bound, module, student, teacher, index, step=3).item()
    torch.testing.assert_close(ours, loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(module.z.double(), torch.tensor(z, dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(module.memory_s.double(), torch.from_numpy(mem_s), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(module.memory_t.double(), torch.from_numpy(mem_t), rtol=1e-5, atol=1e-6)
    # The second batch keeps Z frozen and sees the moved rows.
    student, teacher, index = _crd_batch(3, [5, 2, 9, 8, 0])
    state = {k: v.double().numpy().copy() for k, v in module.state_dict().items()}
    rows = torch.cat([index[:, None], draw_negatives(index, 24, 5, seed=0, step=4)], 1).numpy()
    loss, *_ = _np_crd(state, student["s"].double().numpy(), teacher["t"].double().numpy(), rows, z, 24)
    torch.testing.assert_close(_loss(bound, module, student, teacher, index, step=4).item(), loss, rtol=1e-5, atol=1e-5)


def test_crd_parity_with_repdistiller_on_the_same_banks_and_negatives() -> None:
    fx = _fixture("crd")
    inp, p = fx["inputs"], fx["params"]
    module = CRDModule(12, 10, p["feat_dim"], p["n_data"], p["nce_k"])
    module.load_state_dict({k: _tensor(inp[k]) if k in inp else v for k, v in module.state_dict().items()})
    values = []
    for suffix in ("", "_2"):
        args = [_tensor(inp[f"{k}{suffix}"]) for k in ("student", "teacher", "index", "negatives")]
        kw = {k: p[k] for k in ("nce_t", "momentum", "eps")}
        values.append(crd_contrast(module, *args, **kw).item())
    _assert_rel(values[0], fx["value"])
    _assert_rel(values[1], fx["value_2"])


def test_crd_negatives_are_uniform_over_other_rows_and_fixed_by_seed_step_and_ids() -> None:
    index = torch.tensor([0, 4, 9])
    a = draw_negatives(index, 10, 3000, seed=1, step=7)
    assert a.shape == (3, 3000) and int(a.min()) >= 0 and int(a.max()) <= 9
    assert not (a == index[:, None]).any()
    for i in range(3):  # every other row, about equally often (3000 / 9 ≈ 333 each)
        counts = torch.bincount(a[i], minlength=10)
        assert counts[index[i]] == 0 and int(counts.sum()) == 3000 and int(counts[counts > 0].min()) > 250
    assert torch.equal(a, draw_negatives(index, 10, 3000, seed=1, step=7))
    assert not torch.equal(a, draw_negatives(index, 10, 3000, seed=1, step=8))
    assert not torch.equal(a, draw_negatives(index, 10, 3000, seed=2, step=7))
    # Micro-batches sharing a step (or processes) with other samples draw other rows.
    assert not torch.equal(a[0], draw_negatives(torch.tensor([1]), 10, 3000, seed=1, step=7)[0])


def test_crd_state_dict_round_trip_resumes_with_the_same_banks_z_and_negatives() -> None:
    student, teacher, index = _crd_batch(4, [1, 2, 3, 4])
    torch.manual_seed(0)
    bound, module = _build("crd", CRD, student, teacher, data_size=24)
    _loss(bound, module, student, teacher, index, step=0)
    saved = copy.deepcopy(module.state_dict())
    assert {"memory_s", "memory_t", "z"} <= set(saved) and float(saved["z"].min()) > 0
    torch.manual_seed(123)  # a fresh process: other initial weights and banks until the checkpoint is loaded
    _, resumed = _build("crd", CRD, student, teacher, data_size=24)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed.memory_s, module.memory_s) and torch.equal(resumed.z, module.z)
    student, teacher, index = _crd_batch(5, [7, 2, 20, 4])
    again = _loss(bound, resumed, student, teacher, index, step=1)
    first = _loss(bound, module, student, teacher, index, step=1)
    assert torch.equal(first, again)
    assert torch.equal(module.memory_t, resumed.memory_t)


def test_crd_eval_mode_leaves_the_banks_and_half_precision_keeps_them_float32() -> None:
    student, teacher, index = _crd_batch(6, [1, 2, 3])
    bound, module = _build("crd", CRD, student, teacher, data_size=24)
    module.eval()
    before, keys = module.memory_s.clone(), list(module.state_dict())
    _loss(bound, module, student, teacher, index)
    assert torch.equal(before, module.memory_s)
    module.half()
    assert module.embed_s.weight.dtype == torch.float16
    assert {module.memory_s.dtype, module.memory_t.dtype, module.z.dtype} == {torch.float32}
    assert torch.equal(before, module.memory_s)  # not rounded through float16 on the way
    assert list(module.state_dict()) == keys


def test_crd_errors() -> None:
    student, teacher, index = _crd_batch(7, [1, 2, 3])
    bound, module = _build("crd", CRD, student, teacher, data_size=24)
    with pytest.raises(ConfigError, match=r"objectives\.crd: the batch has no 'index'"):
        _loss(bound, module, student, teacher, None)
    with pytest.raises(ConfigError, match="sample id 24 is outside the memory bank of 24 rows"):
        _loss(bound, module, student, teacher, torch.tensor([1, 24, 3]))
    with pytest.raises(ShapeMismatchError, match="2 sample ids for 3 samples"):
        _loss(bound, module, student, teacher, torch.tensor([1, 2]))
    with pytest.raises(ConfigError, match=r"prepare\(first_batch, data_size=N\)"):
        _build("crd", CRD, student, teacher)
    with pytest.raises(ConfigError, match="expected one 'STUDENT -> TEACHER' pair"):
        _build("crd", {**CRD, "layers": ["s -> t", "s -> t"]}, student, teacher, data_size=24)
    with pytest.raises(ConfigError, match="teaching side returned no feature 'u'"):
        _build("crd", {**CRD, "layers": ["s -> u"]}, student, teacher, data_size=24)
    with pytest.warns(UserWarning, match=r"the memory bank has 4 rows .*; using nce_k=3"):
        _, small = _build("crd", CRD, student, teacher, data_size=4)
    assert small.nce_k == 3
    wider = {"s": torch.randn(3, 5)}
    with pytest.raises(ShapeMismatchError, match=r"student 's' \(3, 5\) gives 5 features per sample.* built for 12"):
        _loss(bound, module, wider, teacher, index)


def test_crd_gradients_reach_the_student_and_both_heads() -> None:
    student, teacher, index = _crd_batch(8, [1, 2, 3, 4])
    student["s"].requires_grad_()
    bound, module = _build("crd", CRD, student, teacher, data_size=24)
    _loss(bound, module, student, teacher, index).backward()
    assert student["s"].grad is not None and student["s"].grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


# -- ReviewKD ---------------------------------------------------------------------------------------------------------

REVIEW_LAYERS = ["s0 -> t0", "s1 -> t1", "s2 -> t2"]


def _review_features(seed: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "s0": (2, 4, 8, 8),
        "s1": (2, 8, 4, 4),
        "s2": (2, 8),
        "t0": (2, 6, 8, 8),
        "t1": (2, 6, 8, 8),
        "t2": (2, 6),
    }
    x = {k: torch.randn(*shape, generator=g) for k, shape in shapes.items()}
    return {k: v for k, v in x.items() if k[0] == "s"}, {k: v for k, v in x.items() if k[0] == "t"}


def test_reviewkd_golden_value() -> None:
    student, teacher = _review_features(0)
    torch.manual_seed(0)
    bound, module = _build("reviewkd", {"layers": REVIEW_LAYERS}, student, teacher)
    assert [abf.att_conv is not None for abf in module.abfs] == [True, True, False]  # the deepest does not fuse
    assert module.abfs[0].conv1[0].out_channels == 8  # mid = min(512, the deepest student level's channels)
    assert _loss(bound, module, student, teacher).item() == pytest.approx(4.969184398651123, rel=1e-4)


def _np_hcl(s: np.ndarray, t: np.ndarray) -> float:
    """HCL with block means for the pyramid: (mse + Σ 2^-k mse_k) / (1 + Σ 2^-k) over sizes 4, 2, 1 below h."""
    h = s.shape[2]
    total, weights = np.mean((s - t) ** 2), 1.0
    weight = 1.0
    for size in (4, 2, 1):
        if size >= h:
            continue
        weight /= 2

        def pool(x: np.ndarray, size: int = size) -> np.ndarray:
            b, c = x.shape[:2]
            return x.reshape(b, c, size, h // size, size, h // size).mean(axis=(3, 5))

        total += weight * np.mean((pool(s) - pool(t)) ** 2)
        weights += weight
    return float(total / weights)


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


def _conv3x3(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    h, wd = x.shape[2:]
    out = torch.zeros(x.shape[0], w.shape[0], h, wd, dtype=x.dtype)
    for di in range(3):
        for dj in range(3):
            out += torch.einsum("oc,bchw->bohw", w[:, :, di, dj], padded[:, :, di : di + h, dj : dj + wd])
    return out


def _nearest(x: torch.Tensor, size: int) -> torch.Tensor:
    f = size // x.shape[2]
    return x.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)


def test_reviewkd_matches_an_independent_fusion_and_numpy_hcl() -> None:
    student, teacher = _review_features(1)
    bound, module = _build("reviewkd", {"layers": REVIEW_LAYERS}, student, teacher)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    s = [student["s0"], student["s1"], student["s2"][:, :, None, None]]
    t = [teacher["t0"], teacher["t1"], teacher["t2"][:, :, None, None]]
    sizes = [8, 8, 1]
    residual, outputs = None, []
    for i in (2, 1, 0):  # deep to shallow
        abf = module.abfs[i]
        x = _bn(torch.einsum("oc,bchw->bohw", abf.conv1[0].weight[:, :, 0, 0], s[i]), abf.conv1[1])
        if residual is not None:
            y = _nearest(residual, x.shape[2])
            att = torch.sigmoid(
                torch.einsum("oc,bchw->bohw", abf.att_conv[0].weight[:, :, 0, 0], torch.cat([x, y], 1))
                + abf.att_conv[0].bias.view(1, -1, 1, 1)
            )
            x = x * att[:, :1] + y * att[:, 1:]
        x = _nearest(x, sizes[i])
        outputs.insert(0, _bn(_conv3x3(x, abf.conv2[0].weight), abf.conv2[1]))
        residual = x
    expected = sum(_np_hcl(o.detach().double().numpy(), ti.double().numpy()) for o, ti in zip(outputs, t, strict=True))
    torch.testing.assert_close(_loss(bound, module, student, teacher).item(), expected, rtol=1e-5, atol=1e-6)


def test_reviewkd_parity_with_mdistiller() -> None:
    fx = _fixture("reviewkd")
    inp = fx["inputs"]
    student = [_tensor(inp[f"student_{i}"]) for i in range(3)]
    teacher = [_tensor(inp[f"teacher_{i}"]) for i in range(3)]
    module = ReviewModule([4, 8, 8], [6, 6, 6], fx["params"]["max_mid_channels"])
    for i, abf in enumerate(module.abfs):
        abf.load_state_dict({k: _tensor(inp[f"abf_{i}.{k}"], v) for k, v in abf.state_dict().items()})
    maps = [x if x.dim() == 4 else x[:, :, None, None] for x in student]
    t_maps = [x if x.dim() == 4 else x[:, :, None, None] for x in teacher]
    _assert_rel(review_loss(module, maps, t_maps, fx["params"]["pyramid"]).item(), fx["value"])


def test_reviewkd_errors() -> None:
    student, teacher = _review_features(2)
    with pytest.raises(ConfigError, match="student returned no feature 'nope'"):
        _build("reviewkd", {"layers": ["nope -> t0"]}, student, teacher)
    tokens = {**teacher, "t1": torch.randn(2, 16, 6)}
    with pytest.raises(ShapeMismatchError, match=r"objectives\.reviewkd: student 's1' \(2, 8, 4, 4\) vs teacher 't1'"):
        _build("reviewkd", {"layers": REVIEW_LAYERS}, student, tokens)
    with pytest.raises(ConfigError, match="pyramid"):
        _build("reviewkd", {"layers": REVIEW_LAYERS, "pyramid": [4, 0]}, student, teacher)
    _, module = _build("reviewkd", {"layers": REVIEW_LAYERS}, student, teacher)
    with pytest.raises(ConfigError, match="not built for this layer map"):
        _loss(objective("reviewkd", layers=REVIEW_LAYERS[:2]), module, student, teacher)


def test_reviewkd_gradients_reach_the_student_and_every_fusion_module() -> None:
    student, teacher = _review_features(3)
    student = {k: v.requires_grad_() for k, v in student.items()}
    bound, module = _build("reviewkd", {"layers": REVIEW_LAYERS}, student, teacher)
    _loss(bound, module, student, teacher).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in student.values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


# -- through the Distiller --------------------------------------------------------------------------------------------


def test_distiller_trains_crd_vid_and_reviewkd_with_a_bank_sized_by_the_data() -> None:
    torch.manual_seed(0)
    teacher = build_model("cnn", 10, (1, 16, 16), widths=(16, 32))
    student = build_model("cnn", 10, (1, 16, 16), widths=(8, 16))
    terms = {"ce": 1.0, "crd": 0.8, "vid": 1.0, "reviewkd": 1.0}
    distiller = Distiller(student, teacher, terms)
    head = f"{len(student) - 2}:input"  # the pooled features, before the dropout in front of the classifier
    assert distiller.terms["crd"].objective.params["layers"] == [f"{head} -> {len(teacher) - 2}:input"]
    assert distiller.terms["reviewkd"].objective.params["layers"][-1] == f"{head} -> {len(teacher) - 2}:input"
    assert len(distiller.terms["vid"].objective.params["layers"]) == 2  # uniform over the two stages
    batches = [
        {"input": torch.randn(6, 1, 16, 16), "label": torch.randint(0, 10, (6,)), "index": torch.arange(6) + 6 * i}
        for i in range(3)
    ]
    with pytest.warns(UserWarning, match="using nce_k=29"):
        distiller.prepare(batches[0], data_size=30)
    bank = distiller.connectors["crd"]
    assert bank.memory_s.shape == (30, 128)
    before = bank.memory_s.clone()
    optimizer = torch.optim.SGD(distiller.parameters_to_train(), lr=0.05)
    distiller.train()
    for step, batch in enumerate(batches):
        out = distiller(batch, step=step)
        assert all(torch.isfinite(v) for v in out.terms.values())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    changed = (bank.memory_s != before).any(dim=1)
    assert changed[:18].all() and not changed[18:].any()  # only the rows of the samples seen
    assert (
        "connector.crd" in distiller.trainable() and "memory_t" in distiller.trainable()["connector.crd"].state_dict()
    )


def test_crd_bank_has_one_row_per_training_sample_when_the_ids_are_known() -> None:
    torch.manual_seed(0)
    student = {"s": torch.randn(4, 6)}
    teacher = {"t": torch.randn(4, 5)}
    ids = torch.tensor([3, 7, 8, 12, 20])  # sparse training ids: a validation split took the others
    bound = objective("crd", layers=["s -> t"], nce_k=2)
    s_out = StudentOutput(None, student)
    t_out = TeacherOutput(features=FeatureSignal(teacher))
    module = bound.spec.build(bound.params, BuildContext("crd", s_out, t_out, None, 21, ids))
    assert module.data_size == 5 and module.nce_k == 2
    assert module.rows("crd", torch.tensor([3, 20, 8])).tolist() == [0, 4, 2]
    with pytest.raises(ConfigError, match="sample id 4 is not a training sample"):
        module.rows("crd", torch.tensor([4]))
    state = module.state_dict()
    assert torch.equal(state["row_of_id"][ids], torch.arange(5))  # the lookup is checkpointed with the banks
    before = module.memory_s.clone()
    pair = PairContext(s_out, t_out, index=torch.tensor([3, 7, 12, 20]), connector=module)
    module.train()
    assert torch.isfinite(bound.compute(pair))
    changed = (module.memory_s != before).any(dim=1)
    assert changed.tolist() == [True, True, False, True, True]  # id 8 (row 2) was not in the batch
