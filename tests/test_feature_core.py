"""Layer maps, feature stages, recorder paths and connectors: the core every feature objective stands on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kdforge import Distiller
from kdforge.capture import Recorder
from kdforge.connectors import build_connector
from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.models import build_model
from kdforge.models.stages import embedding_path, feature_stages
from kdforge.objectives.layers import automatic_pairs

S4 = ["s1", "s2", "s3", "s4"]
T6 = ["t1", "t2", "t3", "t4", "t5", "t6"]


def test_uniform_map_pairs_each_shallow_stage_with_the_same_relative_depth() -> None:
    assert automatic_pairs("uniform", S4, T6) == [("s1", "t1"), ("s2", "t3"), ("s3", "t4"), ("s4", "t6")]
    assert automatic_pairs("uniform", T6[:2], S4) == [("t1", "s2"), ("t2", "s4")]  # a deeper student keeps 2


def test_last_k_and_reverse_maps() -> None:
    assert automatic_pairs("last", S4, T6) == [("s4", "t6")]
    assert automatic_pairs("last-2", S4, T6) == [("s3", "t5"), ("s4", "t6")]
    assert automatic_pairs("reverse", S4, T6) == [("s1", "t6"), ("s2", "t4"), ("s3", "t3"), ("s4", "t1")]
    with pytest.raises(ConfigError, match="k=5"):
        automatic_pairs("last-5", S4, T6)
    with pytest.raises(ConfigError, match="expected one of"):
        automatic_pairs("diagonal", S4, T6)


def test_models_name_their_stages_and_embedding() -> None:
    cnn = build_model("cnn", 10, (1, 28, 28), widths=(8, 16))
    assert [type(cnn[int(p)]) for p in feature_stages(cnn)] == [nn.MaxPool2d, nn.MaxPool2d]
    # The features before the dropout that precedes the head: a dropped-out embedding would distort relations.
    assert embedding_path(cnn) == f"{len(cnn) - 2}:input" and isinstance(cnn[len(cnn) - 2], nn.Dropout)
    assert embedding_path(build_model("mlp", 10, (1, 28, 28), hidden=(32,))) == "3:input"  # no dropout: the head's
    assert feature_stages(build_model("resnet8", 10, (3, 32, 32))) == ["layer1", "layer2", "layer3"]
    mlp = build_model("mlp", 10, (1, 28, 28), hidden=(32, 16))
    assert [type(mlp[int(p)]) for p in feature_stages(mlp)] == [nn.ReLU, nn.ReLU]

    class Blocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.small = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
            self.layers = nn.ModuleList([nn.Linear(8, 8) for _ in range(4)])

    assert feature_stages(Blocks()) == [f"layers.{i}" for i in range(4)]  # the largest stack of same-class blocks
    with pytest.raises(ConfigError, match="names no feature stages"):
        feature_stages(nn.Linear(2, 2))


def test_recorder_reads_a_module_input_and_a_tuple_element() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x + 1, x * 2

    model = nn.Sequential(nn.Linear(3, 4), Pair())
    x = torch.randn(2, 3)
    with Recorder(model, ["1:input", "1:1", "1"]) as rec:
        model(x)
    h = model[0](x)
    assert torch.equal(rec.tensors["1:input"], h)
    assert torch.equal(rec.tensors["1:1"], h * 2) and torch.equal(rec.tensors["1"], h + 1)
    with pytest.raises(ConfigError, match="no module 'nope'"):
        Recorder(model, ["nope:input"])
    with pytest.raises(ConfigError, match="':input' or ':N'"):
        Recorder(model, ["1:weights"])


@pytest.mark.parametrize(
    ("kind", "student", "teacher"),
    [
        ("linear", (4, 8, 14, 14), (4, 16, 7, 7)),
        ("linear", (4, 8, 7, 7), (4, 32)),
        ("conv1x1", (4, 8, 7, 7), (4, 16, 14, 14)),
        ("mlp", (4, 10, 8), (4, 10, 12)),
        ("attention", (4, 8, 7, 7), (4, 5, 12)),
        ("attention", (4, 8), (4, 16, 7, 7)),
    ],
)
def test_connectors_map_the_student_layout_onto_the_teachers(kind, student, teacher) -> None:
    connector = build_connector(kind, torch.randn(*student), torch.randn(*teacher))
    assert tuple(connector(torch.randn(*student)).shape) == teacher


def test_connector_refuses_layouts_it_cannot_map() -> None:
    with pytest.raises(ShapeMismatchError, match="use connector 'attention'"):
        build_connector("linear", torch.randn(4, 5, 8), torch.randn(4, 7, 12))
    with pytest.raises(ShapeMismatchError, match="conv1x1"):
        build_connector("conv1x1", torch.randn(4, 8), torch.randn(4, 12))


def _cnns() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return build_model("cnn", 10, (1, 28, 28), widths=(16, 32, 64)), build_model("cnn", 10, (1, 28, 28), widths=(8, 16))


def test_automatic_map_is_resolved_before_the_first_batch_and_trains_its_connectors() -> None:
    teacher, student = _cnns()
    hint = {"weight": 1.0, "layers": "uniform", "connector": "conv1x1"}
    distiller = Distiller(student, teacher, {"ce": 1.0, "hint": hint})
    pairs = distiller.terms["hint"].objective.params["layers"]
    t_stages, s_stages = feature_stages(teacher), feature_stages(student)
    assert pairs == [f"{s_stages[0]} -> {t_stages[0]}", f"{s_stages[1]} -> {t_stages[2]}"]  # floor((i+1)·3/2)-1
    batch = {"input": torch.randn(6, 1, 28, 28), "label": torch.randint(0, 10, (6,))}
    distiller.prepare(batch)
    distiller.train()
    out = distiller(batch)
    out.loss.backward()
    assert len(distiller.connectors["hint"]) == 2
    assert all(p.grad is not None for p in distiller.connectors["hint"].parameters() if p.requires_grad)
    exported = distiller.export()
    assert exported is student and not any(m._forward_hooks for m in student.modules())


def test_embedding_map_compares_the_inputs_of_the_two_heads() -> None:
    teacher, student = _cnns()
    distiller = Distiller(student, teacher, {"hint": {"layers": "embedding"}})
    assert distiller.terms["hint"].objective.params["layers"] == [
        f"{len(student) - 2}:input -> {len(teacher) - 2}:input"  # the input of each dropout before the head
    ]
    batch = {"input": torch.randn(4, 1, 28, 28)}
    distiller.prepare(batch)
    assert torch.isfinite(distiller(batch).loss)


def test_a_missing_layer_fails_before_training_naming_it_and_its_neighbours() -> None:
    teacher, student = _cnns()
    distiller = Distiller(student, teacher, {"hint": {"layers": ["4 -> layer9"]}})
    with pytest.raises(ConfigError, match="no module 'layer9'"):
        distiller.prepare({"input": torch.randn(2, 1, 28, 28)})
    assert not any(m._forward_hooks for m in student.modules())  # a refused map leaves no hook behind
    with pytest.raises(ConfigError, match=r"objectives.hint.layers: 'layer3' is not a layer pair"):
        Distiller(student, teacher, {"hint": {"layers": ["layer3"]}})
    with pytest.raises(ConfigError, match=r"objectives\.hint: needs a layer map"):
        Distiller(student, teacher, {"hint": {"weight": 1.0}})


def test_a_shape_the_connector_cannot_map_fails_on_the_first_batch_naming_both_layers() -> None:
    teacher, student = _cnns()
    distiller = Distiller(student, teacher, {"hint": {"layers": ["2 -> 22"], "connector": "conv1x1"}})
    with pytest.raises(ShapeMismatchError, match="'2' -> '22'"):
        distiller.prepare({"input": torch.randn(2, 1, 28, 28)})


def test_automatic_map_needs_a_teacher_network() -> None:
    _, student = _cnns()
    peer = build_model("cnn", 10, (1, 28, 28), widths=(8, 16))
    objectives = {"hint": {"layers": "last", "pair": "a <- b"}}
    distiller = Distiller({"a": student, "b": peer}, None, objectives)  # a student teaching another is a network
    assert distiller.terms["hint"].objective.params["layers"] == [
        f"{feature_stages(student)[-1]} -> {feature_stages(peer)[-1]}"
    ]


def test_modules_built_during_an_evaluation_do_not_learn() -> None:
    teacher, student = _cnns()
    distiller = Distiller(student, teacher, {"hint": {"layers": "last", "connector": "conv1x1"}})
    distiller.eval()
    batch = {"input": torch.randn(4, 1, 28, 28)}
    distiller.prepare(batch)
    assert not distiller.connectors["hint"].training
    bn = distiller.connectors["hint"][0][-1]
    before = bn.running_mean.clone()
    distiller(batch)
    assert torch.equal(bn.running_mean, before)


def test_built_modules_train_under_bf16_autocast_and_resume_exactly() -> None:
    """Connectors run on recorded features inside the Distiller's autocast; every built module's state resumes.

    In its own process: Accelerate's state is per process, and other tests already chose no mixed precision.
    """
    worker = Path(__file__).with_name("bf16_resume_worker.py")
    res = subprocess.run([sys.executable, str(worker)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"differ": {}, "resumed_from": 8}


def test_recorder_paths_that_cannot_be_read_say_why() -> None:
    class KeywordOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(input=x)

    model = KeywordOnly()
    with Recorder(model, ["inner:input"]), pytest.raises(ConfigError, match="keyword arguments only"):
        model(torch.randn(2, 3))
    plain = nn.Sequential(nn.Linear(3, 3))
    with Recorder(plain, ["0:1"]), pytest.raises(ConfigError, match="returns a Tensor, not a tuple; record '0'"):
        plain(torch.randn(2, 3))


def test_a_teacher_path_error_names_the_teacher() -> None:
    teacher, student = _cnns()
    distiller = Distiller(student, teacher, {"hint": {"layers": ["2 -> layer9"]}})
    with pytest.raises(ConfigError, match=r"^teacher 'teacher': Recorder: Sequential has no module 'layer9'"):
        distiller.prepare({"input": torch.randn(2, 1, 28, 28)})


def test_attention_connector_refuses_another_length_than_it_was_built_for() -> None:
    connector = build_connector("attention", torch.randn(2, 7, 8), torch.randn(2, 5, 12))
    with pytest.raises(ShapeMismatchError, match="built for 7 student positions, got 9"):
        connector(torch.randn(2, 9, 8))
