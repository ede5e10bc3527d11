"""Sweeps that survive: a failed job ends only itself, the sweep exits non-zero at its end, a search resumes.

- jobs.py: `sweep_job`, the `@hydra.main` wrapper that turns a failed job into NaN in a multirun
- health.py: `SweepHealth`, the Hydra callback that exits 1 after all jobs ran if one was unhealthy
- study.py: the resuming Optuna sweeper behind hydra_plugins.kdlab_optuna_sweeper
- launchers.py: `check_launcher_strategy`, refusing script-relaunching DDP inside a sweep's job
"""

from kdlab.sweeps.health import SweepFailed, SweepHealth, job_health
from kdlab.sweeps.jobs import in_multirun, sweep_job
from kdlab.sweeps.launchers import RefuseRelaunchingDDP, check_launcher_strategy, in_submitit_local_job

__all__ = [
    "RefuseRelaunchingDDP",
    "SweepFailed",
    "SweepHealth",
    "check_launcher_strategy",
    "in_multirun",
    "in_submitit_local_job",
    "job_health",
    "sweep_job",
]
