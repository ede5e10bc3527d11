"""Contrastive representation distillation (CRD, Tian, Krishnan and Isola 2020), as the authors' code has it
(HobbitLong/RepDistiller crd/criterion.py `CRDLoss` and crd/memory.py `ContrastMemory`).

The student's and the teacher's penultimate features are each embedded (Linear + L2 norm, trained with the
student) into `feat_dim` dimensions. Two memory banks hold one embedding per training sample, the student's
and the teacher's, updated with momentum at the batch's sample indices. Each sample's student embedding is
scored against the teacher bank's row of the same sample (the positive) and `nce_k` rows of other samples
(the negatives), and the teacher's embedding against the student bank likewise; the NCE loss of eq. 18
(`ContrastLoss`) of the two is the term. Deliberate differences from the authors' code, each documented
where it is made: negatives are drawn with replacement from a seeded, checkpointed generator (the authors'
loader draws them without replacement from numpy's global state), a zero vector is normalised to zero instead
of NaN, and held-out batches (no bank row of theirs exists) get a loss the authors never compute.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.data.batches import derive_seed
from kdlab.losses.base import LossInputs, check_number
from kdlab.losses.features import LayerTerm

log = logging.getLogger(__name__)

NCE_EPS = 1e-7  # ContrastLoss's eps in both log ratios
# Random streams of the term, hashed with the run's seed (kdlab.data.batches.derive_seed; the data's
# augmentation is stream 1): the banks' initial rows, the training negatives, the held-out negatives.
BANK_STREAM, NEGATIVES_STREAM, HELD_OUT_STREAM = 21, 22, 23
CHUNK = 128  # samples scored at once: (CHUNK, nce_k + 1, feat_dim) bank rows per bank, ~1 GB at the defaults
FULL_SCORING_RATIO = 64  # score the whole bank at once unless it has more than this many rows per gathered row


class CRD(LayerTerm):
    """CRD's NCE loss between one student and one teacher layer (RepDistiller: the penultimate features).

    Settings as the authors' defaults (train_student.py): `feat_dim` 128, `nce_k` 16384 negatives per
    positive, temperature `nce_t` 0.07, bank momentum `nce_m` 0.5; weighted 0.8 beside CE and KD.

    State, all checkpointed with the system: the two banks (persistent buffers of one row per training
    sample, sized when a Trainer sets the system up, from the training split: `see_training_split`), the
    two normalisation constants Z (set from the first training batch, as the authors do: mean score x N),
    and the generator of the negatives (seeded from `seed`, default the run's seed; its state is the
    term's extra state), so a resumed run draws the very negatives the uninterrupted one draws.

    Negatives, as the authors' CIFAR-100 loader (`mode='exact'`): samples of another class than the
    positive's, uniformly; drawn with replacement (the loader draws without replacement when a class has
    enough other samples, ContrastMemory's own sampler with replacement), which at 16384 draws out of
    tens of thousands changes how many distinct negatives a sample sees by a few percent, not the loss.

    Banks are written only in training (`self.training` and `inputs.index` given). A validation or test
    batch has no bank rows (its indices are positions in another split): its loss scores each sample's
    current student and teacher embeddings as the positive pair against bank rows of other classes,
    drawn from a generator seeded afresh for every batch, so validation never moves the training draws.
    """

    shown = ("student_layer", "teacher_layer", "feat_dim", "nce_k", "nce_t", "nce_m")

    def __init__(
        self, *, weight: float = 0.8, student_layer: str, teacher_layer: str, feat_dim: int = 128,
        nce_k: int = 16384, nce_t: float = 0.07, nce_m: float = 0.5, seed: int | None = None,
        member: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(weight, student_layer, teacher_layer, member)
        for key, value in (("feat_dim", feat_dim), ("nce_k", nce_k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"CRD: {key} must be a whole number >= 1, got {value!r} (the authors use feat_dim 128, nce_k "
                    f"16384). Set distill.losses.<term>.{key}."
                )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"CRD: seed must be a whole number >= 0 or null (the run's seed), got {seed!r}.")
        self.feat_dim, self.nce_k, self.seed = feat_dim, nce_k, seed
        self.nce_t = check_number(self, "nce_t", nce_t, minimum=0.0, inclusive=False, why="It divides the scores.")
        self.nce_m = check_number(
            self, "nce_m", nce_m, minimum=0.0, inclusive=True, maximum=1.0, why="It is the banks' momentum."
        )
        self.embed_student: nn.Linear | None = None  # sized by build() from the real layers
        self.embed_teacher: nn.Linear | None = None
        # One row per training sample, sized by see_training_split (or by the checkpoint a system is loaded from).
        self.register_buffer("student_bank", torch.empty(0, feat_dim))
        self.register_buffer("teacher_bank", torch.empty(0, feat_dim))
        # Z of the student-anchored and the teacher-anchored scores (the authors' Z_v1, Z_v2); < 0: not set yet.
        self.register_buffer("normalisers", torch.full((2,), -1.0))
        # The training split's structure by class, for drawing negatives (not saved: see_training_split sets it).
        self.register_buffer("by_class", torch.empty(0, dtype=torch.long), persistent=False)  # positions, by class
        self.register_buffer("class_counts", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("class_starts", torch.empty(0, dtype=torch.long), persistent=False)  # in by_class
        self.register_buffer("labels", torch.empty(0, dtype=torch.long), persistent=False)
        self._generator: torch.Generator | None = None  # the negatives', made on the banks' device at first use
        self._generator_resume: dict | None = None  # a checkpoint's generator state, until that first use

    # -- sizes from the layers and the data ------------------------------------------------------------
    def build(self, student_features: dict[str, Tensor], teacher_features: dict[str, Tensor]) -> None:
        student = self.feature(student_features, self.student_layer, "student")
        teacher = self.feature(teacher_features, self.teacher_layer, "teacher")
        self.embed_student = nn.Linear(student[0].numel(), self.feat_dim).to(student.device)
        self.embed_teacher = nn.Linear(teacher[0].numel(), self.feat_dim).to(teacher.device)

    def see_training_split(self, labels: Tensor | None) -> None:
        if labels is None or len(labels) == 0:
            raise ValueError(
                "CRD keeps one memory-bank row per training sample, but the datamodule gives no training split "
                "(a kdlab datamodule's `data_train`, set up by its setup()): the bank cannot be sized. Train "
                "with a kdlab datamodule (trainer.fit(module, datamodule=...)), or drop the crd term."
            )
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1:
            raise ValueError(
                "CRD's memory banks are written from each process's own batches, and only rank zero's would "
                "be saved: under DDP the banks would differ between processes and a resumed run would not "
                "be the uninterrupted one. Run CRD on one device (trainer=default), or drop the crd term."
            )
        counts = torch.bincount(labels.long())
        if int(counts.max()) == len(labels):
            raise ValueError(
                f"CRD draws its negatives from other classes than the positive's, but every one of the "
                f"{len(labels)} training samples has label {int(labels[0])}: there is no negative to draw. "
                "Train on at least two classes (check data.exclude_classes)."
            )
        if self.seed is None:
            self.seed = torch.initial_seed()  # seed_everything's seed: the run's
        device = self.student_bank.device
        self.labels, self.class_counts = labels.long().to(device), counts.to(device)
        self.class_starts = (torch.cumsum(counts, 0) - counts).to(device)
        self.by_class = torch.argsort(labels.long(), stable=True).to(device)
        size = len(labels)
        if self.student_bank.shape[0] == size:
            return  # set up again (trainer.test after a fit): keep what training wrote
        if self.student_bank.shape[0]:
            raise ValueError(
                f"CRD's memory bank has {self.student_bank.shape[0]} rows, but the training split now has {size} "
                "samples: it belongs to another dataset, split or data.exclude_classes. Start a new run."
            )
        # The authors' initial rows: uniform in [-stdv, stdv], stdv = 1 / sqrt(feat_dim / 3).
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, BANK_STREAM))
        banks = torch.rand(2, size, self.feat_dim, generator=generator).mul_(2 * stdv).add_(-stdv)
        self.student_bank = banks[0].to(self.student_bank.device)
        self.teacher_bank = banks[1].to(self.teacher_bank.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A system loaded outside a fit (load_from_checkpoint, trainer.test) has no bank yet: the checkpoint's size.
        for name in ("student_bank", "teacher_bank"):
            saved, own = state_dict.get(prefix + name), getattr(self, name)
            if saved is not None and own.shape[0] == 0 and saved.shape[1:] == own.shape[1:]:
                setattr(self, name, torch.empty(saved.shape, dtype=own.dtype, device=own.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- the negatives' generator, checkpointed ---------------------------------------------------------
    def get_extra_state(self) -> dict:
        generator = self._generator
        if generator is None and self._generator_resume is not None:
            return self._generator_resume  # restored and not drawn from yet
        state = None if generator is None else generator.get_state()
        return {"seed": self.seed, "device": None if generator is None else generator.device.type, "state": state}

    def set_extra_state(self, state: dict) -> None:
        self.seed = state["seed"]
        self._generator, self._generator_resume = None, state

    def negatives_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            generator = torch.Generator(device=device).manual_seed(derive_seed(self.seed, NEGATIVES_STREAM))
            saved = self._generator_resume
            if saved is not None and saved["state"] is not None:
                if saved["device"] == generator.device.type:
                    generator.set_state(saved["state"])
                else:
                    log.warning(
                        "CRD's checkpoint holds its negatives' generator on %s; on %s it cannot continue, so its "
                        "draws restart from the seed.", saved["device"], generator.device.type,
                    )  # fmt: skip
            self._generator, self._generator_resume = generator, None
        return self._generator

    def held_out_generator(self, device: torch.device) -> torch.Generator:
        """Outside training: the same draws for every batch, and the training stream left where it is."""
        return torch.Generator(device=device).manual_seed(derive_seed(self.seed, HELD_OUT_STREAM))

    def draw_negatives(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """[B, nce_k] training-split positions of samples whose class differs from each of `labels`, uniformly.

        The split's positions sorted by class put each class in one block; a uniform draw over the positions
        outside the block of class c (`N - count_c` of them) skips that block.
        """
        known = labels < len(self.class_counts)  # a held-out class absent from training: every sample is another's
        label = labels.clamp(max=len(self.class_counts) - 1)
        count = torch.where(known, self.class_counts[label], 0).unsqueeze(1)
        start = self.class_starts[label].unsqueeze(1)
        others = len(self.by_class) - count  # > 0: see_training_split refuses a one-class split
        uniform = torch.rand(len(labels), self.nce_k, generator=generator, device=labels.device, dtype=torch.float64)
        drawn = (uniform * others).long().clamp_(max=others - 1)
        return self.by_class[drawn + count * (drawn >= start)]

    # -- the loss -----------------------------------------------------------------------------------------
    def forward(self, inputs: LossInputs) -> Tensor:
        if self.embed_student is None or self.embed_teacher is None:
            raise RuntimeError(
                "CRD.forward was called before CRD.build: its embedding heads are sized from the real features of "
                f"'{self.student_layer}' and '{self.teacher_layer}', so call build(student_features, "
                "teacher_features) once (the distillation module does this with a dry forward pass)."
            )
        if self.student_bank.shape[0] == 0 or self.by_class.numel() == 0:
            raise ValueError(
                "CRD has not seen the training split: its memory banks and its negatives come from it, given when a "
                "Trainer sets the system up (see_training_split). Called on its own, call "
                "see_training_split(training_labels) first."
            )
        student = self.feature(inputs.student_features, self.student_layer, "student").flatten(1)
        teacher = self.feature(self.teacher_features(inputs), self.teacher_layer, "teacher").detach().flatten(1)
        with torch.autocast(device_type=student.device.type, enabled=False):  # exp(score / 0.07): float32
            s = F.normalize(self.embed_student(student.float()), p=2, dim=1)
            t = F.normalize(self.embed_teacher(teacher.float()), p=2, dim=1)
            if inputs.index is None:
                return self.held_out_loss(s, t, inputs.target)
            index = inputs.index.to(self.by_class.device)
            generator = self.negatives_generator(s.device) if self.training else self.held_out_generator(s.device)
            negatives = self.draw_negatives(self.labels[index], generator)
            rows = torch.cat([index.unsqueeze(1), negatives], dim=1)  # the positive first, as the authors'
            # Student-anchored: its embedding against the teacher bank (the authors' out_v1), and the reverse.
            scores_s = self.scores(s, self.teacher_bank, rows)
            scores_t = self.scores(t, self.student_bank, rows)
            z = self.normalisers_for(scores_s, scores_t)
            if self.training:  # the first training batch sets Z for the run; then it stays
                self.normalisers.copy_(z)
                self.update_banks(index, s.detach(), t.detach())
            return self.nce(scores_s / z[0]) + self.nce(scores_t / z[1])

    def normalisers_for(self, scores_s: Tensor, scores_t: Tensor) -> Tensor:
        """Z of each side: the stored one, or where none is set yet this batch's mean(exp(score / T)) x N, as the
        authors set it from their first batch (no host sync: chosen on the device)."""
        batch = torch.stack([scores_s.detach().mean(), scores_t.detach().mean()]) * self.student_bank.shape[0]
        return torch.where(self.normalisers < 0, batch, self.normalisers)

    def scores(self, anchors: Tensor, bank: Tensor, rows: Tensor) -> Tensor:
        """exp(bank[rows] . anchor / nce_t), [B, nce_k + 1]; the bank rows are constants (no gradient).

        With nce_k + 1 rows per anchor near the bank's size or above (16385 of MNIST's 55000 rows), gathering
        B x (nce_k + 1) x feat_dim floats (1 GB a step at B = 128) costs far more than scoring every row in one
        matrix product (B x N scores) and picking each anchor's; the same dot products either way.
        """
        if bank.shape[0] <= FULL_SCORING_RATIO * rows.shape[1]:
            every = anchors @ bank.detach().clone().T  # [B, N]; a copy: the banks move in place after scoring
            return torch.exp(every.gather(1, rows) / self.nce_t)
        chunks = [
            torch.bmm(bank[r].detach(), a.unsqueeze(2)).squeeze(2)
            for a, r in zip(anchors.split(CHUNK), rows.split(CHUNK), strict=True)
        ]
        return torch.exp(torch.cat(chunks) / self.nce_t)

    def nce(self, probabilities: Tensor) -> Tensor:
        """ContrastLoss (eq. 18): column 0 the positive's P, the others the negatives'; noise m * Pn, Pn = 1/N."""
        noise = self.nce_k / self.student_bank.shape[0]
        positive, negative = probabilities[:, 0], probabilities[:, 1:]
        log_d1 = torch.log(positive / (positive + noise + NCE_EPS))
        log_d0 = torch.log(noise / (negative + noise + NCE_EPS))
        return -(log_d1.sum() + log_d0.sum()) / probabilities.shape[0]

    @torch.no_grad()
    def update_banks(self, index: Tensor, s: Tensor, t: Tensor) -> None:
        """Each sample's bank rows move to momentum * row + (1 - momentum) * embedding, renormalised."""
        for bank, embedding in ((self.student_bank, s), (self.teacher_bank, t)):
            moved = bank[index] * self.nce_m + embedding * (1 - self.nce_m)
            bank.index_copy_(0, index, F.normalize(moved, p=2, dim=1))

    def held_out_loss(self, s: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """A validation or test batch: the current (student, teacher) pair as the positive, negatives from the
        banks' other classes, drawn from a generator seeded afresh (the same draws for every such batch)."""
        negatives = self.draw_negatives(labels.to(self.by_class.device), self.held_out_generator(s.device))
        positive = torch.exp((s * t).sum(1, keepdim=True) / self.nce_t)
        scores_s = torch.cat([positive, self.scores(s, self.teacher_bank, negatives)], dim=1)
        scores_t = torch.cat([positive, self.scores(t, self.student_bank, negatives)], dim=1)
        z = self.normalisers_for(scores_s, scores_t)  # before any training batch (a sanity check): this batch's
        return self.nce(scores_s / z[0]) + self.nce(scores_t / z[1])
