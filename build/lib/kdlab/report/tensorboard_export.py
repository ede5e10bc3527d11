"""The sweep in TensorBoard: the plots as images, and one HPARAMS entry per finished job.

The folder belongs to the report and is rewritten on each call, so entries never pile up. The
images are read back from the PNG files the report saved: no second rendering of each plot.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from kdlab.report.aggregate import SEED_KEY, UNSET, Sweep

HPARAM_METRICS = ("test/acc", "val/acc_best", "test/agreement", "test/kl")


def _hparam(value: Any) -> int | float | str | bool:
    """TensorBoard's hparams take scalars and strings only."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def write_tensorboard(folder: Path, pngs: dict[str, Path], sweep: Sweep) -> None:
    """Jobs whose metrics are all null (nothing to compare) get no entry; smoke jobs say so in `status`."""
    from torch.utils.tensorboard import SummaryWriter  # imports torch: only when writing

    shutil.rmtree(folder, ignore_errors=True)
    with SummaryWriter(log_dir=str(folder)) as writer:
        if pngs:
            from matplotlib.image import imread  # PNGs exist only where matplotlib does

            for name, path in pngs.items():
                writer.add_image(f"sweep/{name}", imread(path), dataformats="HWC")  # float RGBA in [0, 1]
        for job in sweep.finished:
            metrics = {f"hp/{k.replace('/', '_')}": job.metric(k) for k in HPARAM_METRICS}
            metrics = {k: v for k, v in metrics.items() if v is not None}
            if not metrics:
                continue
            hparams = {k: _hparam(job.values.get(k, UNSET)) for k in sweep.keys}
            hparams[SEED_KEY] = _hparam(job.record.seed)
            hparams["status"] = job.record.status
            writer.add_hparams(hparams, metrics, run_name=job.name)
