"""Does the exported file compute what the PyTorch model computes? Checked on every test image.

Tolerance: fp32 carries ~7 significant digits (eps = 1.2e-7). An exporter and a runtime may sum a
dot product in another order (onnxruntime's MLAS and torch's GEMM block differently, fuse the bias
otherwise), which moves a logit by a few eps x sqrt(fan-in) x its size: ~1e-7 to 1e-6 on the MNIST
nets. A real export fault (other mean/std, other weights, a layer lost) moves logits by 1e-2 or
more. So a logit may differ by at most TOLERANCE times the logit scale, max(1, max |logit|): ~100x
above rounding, ~100x below any real fault. Rounding error is relative, hence the scale; the max(1,
.) keeps the bound from vanishing on a net whose logits are all tiny. Argmax must agree on 100%.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

TOLERANCE = 1e-4  # per unit of logit scale; fp32 only (an fp16/int8 export would need its own)
BATCH = 1000  # images per call while checking: 10k test images = 10 calls


class ParityError(RuntimeError):
    """An exported model whose logits differ from the PyTorch model's beyond rounding."""


def parity_limit(reference: Tensor) -> float:
    """The largest logit difference rounding can explain: TOLERANCE x max(1, max |logit|)."""
    return TOLERANCE * max(1.0, float(reference.abs().max())) if reference.numel() else TOLERANCE


def batched_logits(runner, images: Tensor, batch: int = BATCH) -> Tensor:
    """Logits of `images` in chunks, so 10k images need no 10k-row intermediate per layer at once."""
    return torch.cat([runner.logits(images[i : i + batch]) for i in range(0, len(images), batch)])


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy; 0 on no images."""
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0


@dataclass
class Parity:
    """One exported file against its PyTorch model, on `images` test images."""

    role: str
    format: str
    images: int
    max_abs_diff: float
    limit: float  # the tolerance it had to meet (see module docstring)
    agreement: float  # fraction of images with the same argmax
    accuracy_reference: float  # the PyTorch model's test accuracy
    accuracy_export: float

    @property
    def passed(self) -> bool:
        return self.agreement == 1.0 and self.max_abs_diff <= self.limit

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"{self.role} {self.format}: {verdict}: max |logit diff| {self.max_abs_diff:.3g} (limit {self.limit:.3g}), "
            f"argmax agreement {self.agreement:.2%} on {self.images} images, test acc {self.accuracy_export:.2%} "
            f"(PyTorch {self.accuracy_reference:.2%})"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def compare(role: str, fmt: str, reference: Tensor, exported: Tensor, labels: Tensor) -> Parity:
    """Parity of two sets of logits for the same images."""
    if exported.shape != reference.shape:
        raise ParityError(
            f"The {role} {fmt} export returns logits of shape {tuple(exported.shape)} for a batch on which the "
            f"PyTorch model returns {tuple(reference.shape)}: it is not an export of this model. Export it again."
        )
    n = len(labels)
    return Parity(role, fmt, n, max_abs_diff=float((reference - exported).abs().max()) if n else 0.0,
                  limit=parity_limit(reference), agreement=accuracy(exported, reference.argmax(1)) if n else 1.0,
                  accuracy_reference=accuracy(reference, labels),
                  accuracy_export=accuracy(exported, labels))  # fmt: skip
