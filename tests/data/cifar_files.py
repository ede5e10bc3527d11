"""Generated CIFAR files in torchvision's on-disk format: what the CIFAR tests and the `cifar_dir` fixture read.

Test data only, so it lives here and not in kdlab: ``write_cifar`` writes what ``kdlab.data.cifar``
reads and torchvision reads, pickled as Python 2 wrote the real files.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kdlab.data.cifar import cifar_spec


def _py2_pickle(obj: object) -> bytes:
    """``obj`` pickled as Python 2's cPickle wrote CIFAR (protocol 2, ``str`` as byte strings).

    Python 3's pickle cannot write a Python 2 ``str``: its bytes load as bytes even with
    ``encoding="latin1"``, and torchvision, which looks up the key ``"data"``, would not find them.
    Only what the CIFAR files hold is written: dicts, lists, tuples, ints, bools, None, str, arrays.
    """
    out = bytearray(b"\x80\x02")  # PROTO 2

    def put(o: object) -> None:
        if isinstance(o, str | bytes):
            raw = o.encode("latin1") if isinstance(o, str) else o
            out.extend((b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))) + raw)
        elif o is None or isinstance(o, bool):
            out.extend({None: b"N", True: b"\x88", False: b"\x89"}[o])
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, tuple | list):
            out.extend(b"(" if isinstance(o, tuple) else b"](")
            for item in o:
                put(item)
            out.extend(b"t" if isinstance(o, tuple) else b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for key, value in o.items():
                put(key)
                put(value)
            out.extend(b"u")
        elif isinstance(o, np.ndarray) and o.dtype == np.uint8:
            # numpy 1.x's reduction: _reconstruct(ndarray, (0,), "b"), then __setstate__((1, shape, dtype,
            # False, raw bytes)); the dtype is dtype("u1", 0, 1), then __setstate__((3, "|", ..., 0)).
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n")
            put((0,))
            put("b")
            out.extend(b"tR(K\x01")  # TUPLE REDUCE, then MARK and 1: the array's state begins
            put(o.shape)
            out.extend(b"cnumpy\ndtype\n")
            put(("u1", 0, 1))
            out.extend(b"R")
            put((3, "|", None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD: the dtype's state
            put(False)  # not Fortran order
            put(np.ascontiguousarray(o).tobytes())
            out.extend(b"tb")  # TUPLE BUILD: the array's state
        else:
            raise TypeError(f"_py2_pickle writes what CIFAR files hold, not {type(o).__name__}")

    put(obj)
    return bytes(out + b".")


def _checked(what: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, list[int]]:
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != np.uint8 or x.shape[1:] != (3, 32, 32) or y.shape != (len(x),) or y.dtype.kind not in "iu":
        raise ValueError(
            f"write_cifar: {what} must be uint8 [N, 3, 32, 32] with N integer labels; got {x.dtype} {x.shape} "
            f"and {y.dtype} {y.shape}."
        )
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"write_cifar: {what} labels run {y.min()}..{y.max()}, not within 0..{num_classes - 1}.")
    return x.reshape(len(x), 3072), y.tolist()


def write_cifar(
    root: str | os.PathLike,
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    class_names: Sequence[str],
) -> Path:
    """Write arrays to ``root/<folder>`` exactly in torchvision's format; returns the folder.

    CIFAR-10's training set is split over its five batches as evenly as it goes (10000 each in the
    real one). CIFAR-100's files get fine labels only: nothing kdlab or torchvision reads needs coarse.
    """
    spec = cifar_spec(name)
    if len(class_names) != spec.num_classes:
        raise ValueError(f"write_cifar: {spec.title} has {spec.num_classes} classes; got {len(class_names)} names.")
    train_x, train_y = _checked("train", train_x, train_y, spec.num_classes)
    test_x, test_y = _checked("test", test_x, test_y, spec.num_classes)
    folder = Path(root) / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(train_x), len(spec.train) + 1).astype(int)
    spans = zip(spec.train, bounds[:-1], bounds[1:], strict=True)
    files = {f: {"data": train_x[a:b], spec.labels_key: train_y[a:b]} for f, a, b in spans}
    files[spec.test] = {"data": test_x, spec.labels_key: test_y}
    files[spec.meta] = {spec.names_key: list(class_names)}
    for fname, content in files.items():
        part = folder / f".{fname}.{uuid.uuid4().hex}.part"
        part.write_bytes(_py2_pickle(content))
        os.replace(part, folder / fname)
    return folder
