"""LightningModules ("systems"): they wire plain nets to loss terms, metrics and optimisers."""

from kdlab.modules.distillation import DistillationModule
from kdlab.modules.teacher import TeacherModule

__all__ = ["DistillationModule", "TeacherModule"]
