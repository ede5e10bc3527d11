"""A console a person can read, and a run.log that holds everything, whatever the terminal.

Dropped: Lightning's advertising tips, its notes about defaults kdlab sets on purpose, and
deprecation warnings raised inside torch/Lightning internals. Kept: everything about the user's own
config, data and results, and every error.

What the console shows its own way (the live progress bar, the summary table) goes to run.log as plain
lines through the `RUN_LOG` logger, which conf/hydra/default.yaml sends to the file alone.
"""

from __future__ import annotations

import logging
import warnings

RUN_LOG = "kdlab.run_log"  # the logger of lines for run.log only (the console has them as a bar or a table)

# Lightning's info lines that say nothing about this run.
_DROPPED_INFO = (
    "💡 Tip",
    "Trainer already configured with model summary callbacks",
    "Loading `train_dataloader` to estimate number of stepping batches",
)
# Warnings whose cause is in a library, or in a kdlab choice the README explains.
_IGNORED_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # torch 2.13 vs Lightning 2.6 internals
    r"Found \d+ module\(s\) in eval mode at the start of training.*",  # the frozen teacher, on purpose
    r"The number of training batches \(\d+\) is smaller than the logging interval.*",  # metrics are per epoch
    r".*does not have many workers which may be a bottleneck.*",  # batches are one in-memory gather
    r"The `srun` command is available on your system but is not used.*",  # a machine with SLURM installed
)


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_DROPPED_INFO)


def quiet_libraries() -> None:
    """Idempotent; called at the start of every run."""
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropInfo) for f in logger.filters):
            logger.addFilter(_DropInfo())
    for pattern in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
