"""Find or train the teachers a run distils from, without starting it: `python scripts/provision.py <overrides>`.

Takes the same overrides as `train.py` (e.g. `experiment=distill_mlp seed=3`). A job started as several
processes at once (torchrun, or SLURM with several tasks) refuses to train a missing teacher in every
rank; run this once first, then start the job. Prints each teacher's weights file.
"""

import sys

from omegaconf import open_dict

from kdlab.config import compose_config
from kdlab.run import REFUSALS
from kdlab.run.main import provision_only


def main(argv: list[str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir  # no run folder: nothing is written but the teacher cache
    try:
        refs = provision_only(cfg)
    except REFUSALS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not refs:
        print("This run distils from no teacher (module=distill is not set): nothing to provision.")
    for ref in refs:
        print(f"{ref.recipe or 'given file'} (seed {ref.seed}): {ref.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
