"""A stand-in for kdlab's train.py on the test SLURM cluster: no torch, a few seconds per job.

Each job counts `steps` deterministic steps (an LCG over the seed), one per `step_s` seconds, in its Hydra
job folder. On SIGTERM it stops at the next step boundary, writes checkpoints/interrupted.ckpt (JSON) and
exits 143, like kdlab's InterruptHandler. At start it resumes from that file if it is there. Every start
and stop is one line of events.log in the job folder, with the SLURM/submitit facts of the moment.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

ENV_KEYS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_RESTART_COUNT",
    "SLURM_STEP_ID",
    "SLURM_PROCID",
    "SUBMITIT_EXECUTOR",
    "SUBMITIT_FOLDER",
)


def log(out: Path, event: str, **extra) -> None:
    line = {"t": round(time.time(), 2), "event": event, "pid": os.getpid(), **extra}
    line["env"] = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
    with open(out / "events.log", "a") as f:
        f.write(json.dumps(line) + "\n")


@hydra.main(version_base="1.3", config_path="conf", config_name="toy")
def main(cfg: DictConfig) -> int:
    out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoints" / "interrupted.ckpt"
    state = {"step": 0, "value": int(cfg.seed) + 1}
    resumed_from = None
    if ckpt.exists():
        state = json.loads(ckpt.read_text())
        resumed_from = state["step"]
    log(
        out,
        "start",
        resumed_from=resumed_from,
        handlers={s.name: repr(signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)},
    )

    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    while state["step"] < cfg.steps:
        time.sleep(cfg.step_s)
        state["value"] = (state["value"] * 1103515245 + 12345 + state["step"]) % 2**31
        state["step"] += 1
        (out / "progress").write_text(str(state["step"]))
        if stop:
            ckpt.parent.mkdir(exist_ok=True)
            ckpt.write_text(json.dumps(state))
            log(out, "interrupted", step=state["step"])
            sys.exit(128 + stop[0])
    result = {"value": state["value"], "steps": state["step"], "resumed_from": resumed_from}
    (out / "result.json").write_text(json.dumps(result))
    log(out, "done", **result)
    return state["value"]


if __name__ == "__main__":
    main()
