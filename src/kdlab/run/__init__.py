"""Running one training job: the entry point, validation, the run folder, fitting, resume, the summary."""

from kdlab.run.main import REFUSALS, hydra_main, main, train

__all__ = ["REFUSALS", "hydra_main", "main", "train"]
