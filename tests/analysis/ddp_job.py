"""`python ddp_job.py <out_dir> <devices>`: TestAnalysis over the stand-in under DDP; rank zero writes results.json.

Lightning's CPU DDP re-runs this file in each child process, so it must be a script, not a test.
"""

import json
import sys
from pathlib import Path

from lightning import Trainer
from stand_in import TinyData, TinySystem

from kdlab.analysis import TestAnalysis

if __name__ == "__main__":
    out, devices = Path(sys.argv[1]), int(sys.argv[2])
    data = TinyData(n=131, batch_size=16)  # odd: 2 ranks get 66 and 65 images, none repeated
    analysis = TestAnalysis(out)
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        callbacks=[analysis],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
    )
    trainer.test(TinySystem(data), datamodule=data, verbose=False)
    if trainer.is_global_zero:
        (out / "results.json").write_text(json.dumps(analysis.results))
