"""Teachers as artefacts: an entry (weights, net, data contract), provisioning before a run, cached outputs."""

from kdlab.teachers.entry import TeacherContractError, teacher_norm
from kdlab.teachers.provision import TeacherCacheError, provision_teacher, teacher_run_config

__all__ = ["TeacherCacheError", "TeacherContractError", "provision_teacher", "teacher_norm", "teacher_run_config"]
