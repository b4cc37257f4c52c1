"""Teachers: every kind is one file registered in TEACHERS."""

from kdforge.teachers.base import Teacher, module_fingerprint
from kdforge.teachers.live import Live
from kdforge.teachers.past_self import PastSelf

__all__ = ["Live", "PastSelf", "Teacher", "module_fingerprint"]
