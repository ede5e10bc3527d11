"""A frozen teacher (or an ensemble of them), a trainable student and a weighted sum of loss terms."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from kdlab.checkpoints import CheckpointError, load_weights, sha256_file
from kdlab.config import plain
from kdlab.data.transforms import normalize
from kdlab.losses import LossInputs
from kdlab.losses.base import check_term_members
from kdlab.models import build_net, net_config
from kdlab.modules.base import ClassifierSystem
from kdlab.modules.ensemble import TeacherEnsemble, check_combination
from kdlab.modules.taps import FeatureTap
from kdlab.teachers.outputs import TeacherOutputs, TeacherOutputsError, evaluating, tolerance
from kdlab.teachers.validation import ValidationLogits

TEACHER_PREFIX = "teacher."


class DistillationModule(ClassifierSystem):
    """Distils `teacher_net` (loaded from `teacher_ckpt`, frozen) into `net`, the student.

    Frozen means: no `requires_grad`, not in the optimiser, forward under `no_grad`, and `eval()`
    for the whole run (re-asserted whenever Lightning calls `.train()`), so its dropout and
    batch-norm statistics never change. Checkpoints leave the teacher out; it is re-read from
    `teacher_ckpt` on load.

    Each teacher sees the batch normalised as it was trained: `teacher_norm` ({mean, std} of the data
    it was trained on) when that differs from this data's, else the student's very input.

    An ensemble comes as `members` (each {net, ckpt, sha256, norm}) and `combine` ({mode, temperature,
    weights}) instead of `teacher_net`/`teacher_ckpt`: `self.teacher` is then a TeacherEnsemble,
    frozen in the same three ways, whose members are each re-read from their own file on load.
    """

    def __init__(
        self, net: Mapping, teacher_net: Mapping | None, teacher_ckpt: str | None, losses: Mapping[str, Mapping | None],
        optimizer: Mapping, scheduler: Mapping | None = None, *, num_classes: int, input_shape: Sequence[int],
        teacher_sha256: str | None = None, teacher_norm: Mapping | None = None,
        members: Sequence[Mapping] | None = None, combine: Mapping | None = None,
        compile: bool = False,  # module.compile=true compiles the student (torch.compile)
    ) -> None:  # fmt: skip
        # Only an ensemble adds its keys: a single teacher's hyperparameters stay exactly as they were.
        ensemble = {} if members is None else {"members": [plain(m) for m in members], "combine": plain(combine) or {}}
        super().__init__(
            net, losses, optimizer, scheduler, num_classes=num_classes, input_shape=input_shape, compile=compile,
            teacher_net=teacher_net, teacher_ckpt=str(teacher_ckpt) if teacher_ckpt else teacher_ckpt,
            teacher_sha256=teacher_sha256, teacher_norm=plain(teacher_norm), **ensemble,
        )  # fmt: skip
        terms = [self.losses[name] for name in self.active_terms]
        check_term_members(dict(zip(self.active_terms, terms, strict=True)), None if members is None else len(members))
        if members is None and not teacher_ckpt:
            raise ValueError(
                "DistillationModule needs teacher_ckpt: set teacher.ckpt_path, or leave it null in "
                "train.py so the teacher is found in the cache or trained first."
            )
        if members is not None and (teacher_ckpt or not members):
            raise ValueError(
                "DistillationModule takes either one teacher (teacher_net, teacher_ckpt) or an ensemble (members, "
                f"at least one), not both; got teacher_ckpt={teacher_ckpt!r} and {len(members)} member(s)."
            )
        if members is None:
            one = {"net": self.hparams.teacher_net, "ckpt": teacher_ckpt, "sha256": teacher_sha256}
            self.teacher = _load_teacher(one, None, input_shape, num_classes)
        else:
            nets = [_load_teacher(spec, i, input_shape, num_classes) for i, spec in enumerate(self.hparams.members)]
            self.teacher = TeacherEnsemble(nets, **check_combination(self.hparams.combine, len(nets)))
        # {mean, std} per teacher net (members in order), None where it reads the student's input as it is
        self.teacher_norms = [m.get("norm") for m in self.hparams.members] if members is not None else [teacher_norm]
        self.teacher.requires_grad_(False).eval()

        # One teacher taps the layers its terms read; an ensemble's members each those of the terms that name them.
        self.student_tap = FeatureTap(self.net, {n for t in terms for n in t.student_layers}, "student")
        single = () if self.is_ensemble else {n for t in terms for n in t.teacher_layers}
        self.teacher_tap = FeatureTap(self.teacher, single, "teacher")
        self.member_taps = [
            FeatureTap(m, {n for t in terms if t.member == i for n in t.teacher_layers}, f"teacher member {i}")
            for i, m in enumerate(self.teacher.members if self.is_ensemble else ())
        ]
        # One dry pass so terms can size their own parameters (e.g. a hint regressor) up front.
        with torch.no_grad(), evaluating(self.net):
            example = torch.zeros(2, *input_shape)
            self.net(example)
            for teacher in self.teacher_nets:
                teacher(example)
        student_feats, teacher_feats = self.student_tap.pop(), self.teacher_tap.pop()
        member_feats = [tap.pop() for tap in self.member_taps]
        for term in terms:  # weight-0 terms are neither tapped nor built
            term.build(student_feats, teacher_feats if term.member is None else member_feats[term.member])
        # The teacher's logits of every training view, when cached (kdlab.teachers.outputs); not saved in
        # checkpoints. Validation scores each image live once per fit (kdlab.teachers.validation); test always.
        self.teacher_outputs: list[TeacherOutputs] | None = None  # one per teacher net (ensemble members)
        self._check_outputs = False  # compare the first training batch of each fit with the live teacher
        self.validation_logits: ValidationLogits | None = None  # during a fit whose terms read logits alone
        self._rescore_validation = False  # the first validation batch of each epoch runs the teacher again
        self._validation_live = True  # this validation batch ran the teacher (not read from validation_logits)

    def teacher_net_config(self, i: int = 0) -> dict:
        """Teacher net `i`'s config (an ensemble's member `i`), its input shape and classes filled in."""
        hp = self.hparams
        net = hp.members[i]["net"] if self.is_ensemble else hp.teacher_net
        return net_config(net, hp.input_shape, hp.num_classes)

    @property
    def is_ensemble(self) -> bool:
        return isinstance(self.teacher, TeacherEnsemble)

    @property
    def teacher_nets(self) -> list[nn.Module]:
        """The nets that compute teacher logits: an ensemble's members in order, or the one teacher."""
        return list(self.teacher.members) if self.is_ensemble else [self.teacher]

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # Lightning calls .train() on the whole module each epoch
        return self

    def teacher_feature_terms(self) -> list[str]:
        """Active loss terms that read teacher features: with any, the teacher must run (no cached logits)."""
        return [name for name in self.active_terms if self.losses[name].teacher_layers]

    def use_teacher_outputs(self, outputs: TeacherOutputs | Sequence[TeacherOutputs] | None) -> None:
        """Read training logits from `outputs` instead of running the teacher (None: run it again).

        An ensemble takes one TeacherOutputs per member, in member order: each member's own cache
        entry, combined per batch exactly as the live members' logits would be.
        """
        if outputs is not None and (terms := self.teacher_feature_terms()):
            raise ValueError(
                f"The loss term(s) {', '.join(terms)} read teacher features, which cached teacher outputs do not "
                "hold: the teacher must run live (runtime.teacher_cache=off)."
            )
        entries = None if outputs is None else [outputs] if isinstance(outputs, TeacherOutputs) else list(outputs)
        if entries is not None and len(entries) != len(self.teacher_nets):
            raise ValueError(
                f"use_teacher_outputs: {len(entries)} cache entries for {len(self.teacher_nets)} teacher net(s)."
            )
        self.teacher_outputs = entries
        self._check_outputs = entries is not None

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._check_outputs = self.teacher_outputs is not None
        # Validation sees the same images every epoch unless the fit reloads its dataloaders.
        reloads = getattr(self._driving_trainer(), "reload_dataloaders_every_n_epochs", 0)
        keep = not self.teacher_feature_terms() and not reloads
        self.validation_logits = ValidationLogits() if keep else None

    def on_fit_end(self) -> None:
        self.validation_logits = None  # a later trainer.validate() may bring other images under the same positions

    def on_validation_epoch_start(self) -> None:
        self._rescore_validation = True

    def known_teacher_logits(self, batch, stage: str) -> list[torch.Tensor] | None:
        """The known logits [B, C] of this batch, one per teacher net (an ensemble's members in order): a training
        batch's from the cache, a validation batch's from an earlier epoch of this fit."""
        if stage == "val":
            kept, rescore = self.validation_logits, self._rescore_validation
            # not while the first training batch is still to be checked against the cache: that check is its own
            known = None if kept is None or rescore or self._check_outputs else kept.get(batch.index)
            self._validation_live = known is None  # shared_step keeps only what the teacher computed
            return known
        if stage != "train" or self.teacher_outputs is None:
            return None
        if batch.affine is not None:  # a continuous view: no entry holds its logits
            raise TeacherOutputsError(
                "This training batch is distorted by data.augment_affine, whose continuous views no cached teacher "
                "output holds: the teacher must score it live. Run with runtime.teacher_cache=auto or off."
            )
        return [entry.lookup(batch.index, batch.shift, batch.flip) for entry in self.teacher_outputs]

    def teacher_input(self, batch, i: int = 0) -> torch.Tensor:
        """What teacher net `i` reads: the student's input, or the pixels normalised by that teacher's own data."""
        norm = self.teacher_norms[i]
        return batch.x if norm is None else normalize(batch.pixels, norm["mean"], norm["std"])

    def views(self, batch, cached: list[torch.Tensor] | None = None) -> LossInputs:
        """The student's and the teacher's logits (an ensemble's: each member's, and combined) and tapped features.

        `cached`: this training batch's logits from the cache, one per teacher net; the first batch of a fit is
        checked against the live teacher, every other one trains on the cached logits alone.
        """
        logits = cached
        if cached is None or self._check_outputs:
            with torch.no_grad():
                live = [net(self.teacher_input(batch, i)) for i, net in enumerate(self.teacher_nets)]
            if cached is None:
                logits = live
            else:
                self._verify_cached(cached, live)
        teacher_feats, member_feats = self.teacher_tap.pop(), [tap.pop() for tap in self.member_taps]
        return LossInputs(
            student_logits=self.net(batch.x),
            target=batch.y,
            teacher_logits=self.teacher.combine(logits) if self.is_ensemble else logits[0],
            student_features=self.student_tap.pop(),
            teacher_features=teacher_feats,
            member_logits=logits if self.is_ensemble else None,
            member_features=member_feats,
        )

    def shared_step(self, batch, stage: str) -> tuple[torch.Tensor, LossInputs]:
        loss, inputs = super().shared_step(batch, stage)
        if stage == "val" and self.validation_logits is not None and self._validation_live:
            logits = inputs.member_logits if self.is_ensemble else [inputs.teacher_logits]
            if self._rescore_validation:  # this batch ran the live teacher: it must agree with what is kept
                self._rescore_validation = False
                self.validation_logits.check(batch.index, logits, tolerance(self.trainer.precision))
            self.validation_logits.put(batch.index, logits)
        return loss, inputs

    def _verify_cached(self, cached: list[torch.Tensor], live: list[torch.Tensor]) -> None:
        """Once per fit (a host sync): the cached logits of this batch's (image, shift) pairs against the teacher's."""
        self._check_outputs = False
        for cached_logits, live_logits, entry in zip(cached, live, self.teacher_outputs, strict=True):
            tol = entry.tolerance  # of the run's precision (kdlab.teachers.outputs.tolerance)
            if not torch.allclose(cached_logits, live_logits.float(), rtol=tol, atol=tol):
                worst = float((cached_logits - live_logits.float()).abs().max())
                raise TeacherOutputsError(
                    f"The cached teacher outputs ({entry.path}) differ from the live teacher on the first training "
                    f"batch (max |difference| {worst:.3g}): the batches' index or shift no longer mean what they "
                    "meant when the outputs were computed (another split, augmentation or data order?). Run with "
                    "runtime.teacher_cache=off, and report this."
                )

    # -- an ensemble's members ----------------------------------------------------------------------
    def stage_metrics(self, stage: str, num_classes: int) -> dict[str, Metric]:
        metrics = super().stage_metrics(stage, num_classes)
        if stage != "train":  # how closely the student follows the teacher, on held-out images
            metrics["agreement"] = MulticlassAccuracy(num_classes=num_classes, average="micro")
            metrics["kl"] = MeanMetric(nan_strategy="disable")  # the default NaN check reads the device per batch
        if stage == "test":  # the teacher, and each ensemble member, on the very same test images in the one pass
            members = range(len(self.hparams.get("members") or ()))  # called before the members exist: the hparams
            for name in ("teacher_acc", *(f"member{i}_acc" for i in members)):
                metrics[name] = MulticlassAccuracy(num_classes=num_classes, average="micro")
        return metrics

    def teacher_predictions(self, inputs: LossInputs) -> torch.Tensor:
        """What the teacher predicts, as scored: an ensemble's members combined at T=1 (kdlab.modules.ensemble),
        not the targets at the distillation T, so its accuracy stays put when distill.temperature is swept."""
        return self.teacher.predictions(inputs.member_logits) if self.is_ensemble else inputs.teacher_logits

    def update_stage_metrics(self, inputs: LossInputs, metrics: nn.ModuleDict, stage: str) -> None:
        if stage == "train":
            return
        s, t = inputs.student_logits.detach(), self.teacher_predictions(inputs)
        metrics["agreement"].update(s.argmax(1), t.argmax(1))
        # Mean per-sample KL(teacher || student) at T=1: how far the student is from the teacher.
        metrics["kl"].update(
            F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="none", log_target=True).sum(1)
        )
        if stage == "test":
            metrics["teacher_acc"].update(t, inputs.target)
            for i, logits in enumerate(inputs.member_logits or ()):
                metrics[f"member{i}_acc"].update(logits, inputs.target)

    # -- checkpoints: the teacher lives in its own file, not in every student checkpoint ------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith(TEACHER_PREFIX)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        checkpoint["state_dict"].update({TEACHER_PREFIX + k: v for k, v in self.teacher.state_dict().items()})


def _load_teacher(spec: Mapping, member: int | None, input_shape, num_classes) -> nn.Module:
    """The teacher's net (or ensemble member `member`'s) from its file, refused if that changed since distillation."""
    what, key = ("teacher", "teacher") if member is None else (f"teacher member {member}", f"teacher.members.{member}")
    path, sha256 = spec.get("ckpt"), spec.get("sha256")
    if not path:  # a member (one teacher without a file is refused before)
        raise ValueError(
            f"Teacher member {member} has no weights file (members.{member}.ckpt is empty): train.py fills it in "
            f"from the teacher cache, or set teacher.members.{member}.ckpt_path."
        )
    if sha256 is not None and Path(path).is_file() and (found := sha256_file(path)) != sha256:
        raise CheckpointError(
            f"The {what} file {path} has changed since this student was distilled from it "
            f"(sha256 {found[:12]}... now, {sha256[:12]}... then). A student resumed or reloaded "
            "against another teacher would silently mix two experiments. Restore the original teacher "
            "file, or start a new run with the new teacher."
        )
    return load_weights(build_net(spec["net"], input_shape, num_classes), path, role=key)
