"""Teachers: every kind is one file registered in TEACHERS."""

from kdforge.teachers.annotations import Annotations
from kdforge.teachers.base import Teacher, TeacherBuild, evaluation_model, module_fingerprint
from kdforge.teachers.cached import Cached
from kdforge.teachers.ema import Ema
from kdforge.teachers.ensemble import Ensemble
from kdforge.teachers.live import Live
from kdforge.teachers.past_self import PastSelf
from kdforge.teachers.precomputed import Precomputed

__all__ = [
    "Annotations",
    "Cached",
    "Ema",
    "Ensemble",
    "Live",
    "PastSelf",
    "Precomputed",
    "Teacher",
    "TeacherBuild",
    "evaluation_model",
    "module_fingerprint",
]
