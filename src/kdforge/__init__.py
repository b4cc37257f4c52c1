"""kdforge: teacher -> student learning for images, text and language models."""

from kdforge.objectives import Objective, objective
from kdforge.registry import DATASETS, MODELS, OBJECTIVES, STRATEGIES, TEACHERS
from kdforge.signals import DenseSignal, FeatureSignal, Needs, SparseSignal, StudentOutput, TeacherOutput

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "MODELS",
    "OBJECTIVES",
    "STRATEGIES",
    "TEACHERS",
    "DenseSignal",
    "FeatureSignal",
    "Needs",
    "Objective",
    "SparseSignal",
    "StudentOutput",
    "TeacherOutput",
    "__version__",
    "objective",
]
