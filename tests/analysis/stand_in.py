"""A tiny LightningModule and datamodule that follow TestAnalysis's contract (not kdlab's real ones)."""

from types import SimpleNamespace

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import nn
from torch.utils.data import DataLoader


def tiny_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 1, 28, 28] uint8 noise with a bright row at a class-specific height, and the labels."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = torch.randint(0, 60, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)
    x[torch.arange(n), 0, 2 + 2 * y] = 250
    return x, y


def linear_net(seed: int, skill: float) -> nn.Module:
    """784 -> 10 with random weights plus `skill` times a readout of the class rows: partly right, partly not."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        for k in range(10):
            net[1].weight[k].view(28, 28)[2 + 2 * k] += skill
    return net


class TinyData(L.LightningDataModule):
    num_classes = 10

    def __init__(self, n: int = 130, batch_size: int = 32) -> None:
        super().__init__()
        x, y = tiny_images(n)
        self.data_test = SimpleNamespace(x=x, y=y)
        self.batch_size = batch_size

    def test_dataloader(self) -> DataLoader:
        positions = torch.arange(len(self.data_test.x))
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:  # each image on one rank only
            sampler = UnrepeatedDistributedSampler(
                positions, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
            )
        return DataLoader(positions, batch_size=self.batch_size, sampler=sampler)


class TinySystem(L.LightningModule):
    def __init__(self, data: TinyData, teacher: bool = True) -> None:
        super().__init__()
        self.student = linear_net(0, 0.004)  # ~40% right
        self.teacher = linear_net(1, 0.015) if teacher else None  # ~99% right
        self.register_buffer("x", data.data_test.x, persistent=False)
        self.register_buffer("y", data.data_test.y, persistent=False)

    def logits(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (self.x[index].float() / 255 - 0.13) / 0.31
        out = {"student_logits": self.student(x).detach(), "target": self.y[index], "index": index}
        if self.teacher is not None:
            out["teacher_logits"] = self.teacher(x)
        return out

    def test_step(self, index: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        return self.logits(index)
