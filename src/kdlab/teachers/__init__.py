"""Teachers as artefacts: an entry (weights, net, data contract), provisioning before a run, cached outputs."""

from kdlab.teachers.cache import provide_teacher_outputs
from kdlab.teachers.entry import TeacherContractError, read_entry, teacher_norm
from kdlab.teachers.outputs import TeacherOutputs, TeacherOutputsError
from kdlab.teachers.provision import TeacherCacheError, provision_teacher, teacher_run_config

__all__ = [
    "TeacherCacheError",
    "TeacherContractError",
    "TeacherOutputs",
    "TeacherOutputsError",
    "provide_teacher_outputs",
    "provision_teacher",
    "read_entry",
    "teacher_norm",
    "teacher_run_config",
]
