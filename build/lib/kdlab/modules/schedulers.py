"""Fill a scheduler's length from the trainer, so configs never hard-code steps per epoch."""

import inspect
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

# Keys that mean "how many optimiser steps the schedule spans"; null in YAML = ask the trainer.
LENGTH_KEYS = ("total_steps", "T_max")


def bind_scheduler(make: partial, optimizer: Optimizer, total_steps: int) -> LRScheduler:
    """Call a `_partial_` scheduler config with the optimiser and, where it wants one, the run length.

    e.g. 55k train images / batch 128 = 430 steps per epoch * 60 epochs = 25,800 total steps.
    """
    if not callable(make):
        raise TypeError("The scheduler config must set `_partial_: true` so kdlab can bind the optimiser.")
    params = inspect.signature(make.func if isinstance(make, partial) else make).parameters
    given = make.keywords if isinstance(make, partial) else {}
    fill = {k: total_steps for k in LENGTH_KEYS if k in params and given.get(k) is None}
    try:
        return make(optimizer, **fill)
    except ZeroDivisionError as err:  # OneCycleLR's phases collapse on a handful of steps
        name = getattr(make, "func", make).__name__
        raise ValueError(
            f"{name} cannot be laid over only {total_steps} optimiser steps. Train for more steps "
            "(more epochs, a smaller data.batch_size) or use scheduler=cosine or scheduler=none."
        ) from err
