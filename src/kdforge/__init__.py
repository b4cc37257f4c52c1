"""kdforge: teacher -> student learning for images, text and language models."""

from typing import Any

from kdforge import teachers
from kdforge.capture import Recorder
from kdforge.engine.balancer import Balancer
from kdforge.engine.distiller import Distiller, DistillOutput
from kdforge.llm import assets as llm_assets  # noqa: F401  registers the tokenizer aliases smollm2, gemma3
from kdforge.llm import teachers as llm_teachers  # noqa: F401  registers the teacher kinds served, local, embedding
from kdforge.objectives import Objective, objective
from kdforge.registry import DATASETS, MODELS, OBJECTIVES, STRATEGIES, TEACHERS
from kdforge.signals import DenseSignal, FeatureSignal, Needs, SparseSignal, StudentOutput, TeacherOutput
from kdforge.version import __version__


def __getattr__(name: str) -> Any:
    # The Trainer pulls in Accelerate, which is slow to import; only load it when asked for.
    if name == "Trainer":
        from kdforge.engine.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'kdforge' has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "MODELS",
    "OBJECTIVES",
    "STRATEGIES",
    "TEACHERS",
    "Balancer",
    "DenseSignal",
    "DistillOutput",
    "Distiller",
    "FeatureSignal",
    "Needs",
    "Objective",
    "Recorder",
    "SparseSignal",
    "StudentOutput",
    "TeacherOutput",
    "Trainer",
    "__version__",
    "objective",
    "teachers",
]
