"""The pieces that need DistillKit importable: our losses as DistillKit loss classes, and its trainer with
our teacher schedule and the fixes for four defects of DistillKit 1.0.0 (see docs/distillkit.md).

Imported only by `distillkit_scd.integrations.distillkit` after its version guard; nothing here edits
DistillKit's files or changes its behaviour when DistillKit runs on its own.

Fixes, all in `SCDDistillationTrainer` (a subclass of DistillKit's `DistillationTrainer`):
  (a) the distillation mask is shifted: position s predicts token s+1, so logits[:, s] pairs with
      labels[:, s+1] (DistillKit pairs it with labels[:, s]);
  (b) `position_ids` reach the student and the online teacher (packed / padding-free batches);
  (c) an online teacher is DeepSpeed-prepared when DeepSpeed is on (a teacher loaded after a ZeRO-3
      config exists is partitioned and unusable raw);
  (d) loss parts are summed as detached device tensors and logged once per logging step, not
      `.item()`-synced and logged on every micro-batch.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from distillkit.lossfuncs import ALL_LOSS_CLASSES, LossFunctionBase
from distillkit.signals import DenseSignal, OnlineSignalSource, SparseSignal
from distillkit.trainer import DistillationTrainer
from transformers.modeling_outputs import CausalLMOutput
from transformers.trainer_utils import get_last_checkpoint

from distillkit_scd.losses import (
    IGNORE_INDEX,
    LossSpec,
    TAIDState,
    adaptive_weight,
    compound_loss_from_logits,
)
from distillkit_scd.training.callbacks import ExtraStateCallback, StageCallback, StepLossCallback
from distillkit_scd.training.trainer_base import StagedTrainerMixin
from distillkit_scd.utils.distributed import place_teacher, unwrap

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Losses. The trainer hands them logits already shifted against the targets (fix a) and a `BatchContext`.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BatchContext:
    """What our losses need beyond DistillKit's call signature, set by the trainer per micro-batch.

    targets: (B, T') next-token ids aligned with the logits the losses receive (-100 = no loss).
    segments: (B, T') long, the sample each position belongs to (packed rows hold several samples).
    taid_t: TAID's current t.
    aw: static AW: (B, T') float, the AW of each position's sample for the active checkpoint (the paper's
        table); None: `scd_aw_kl` computes AW online from the batch's logits.
    """

    targets: torch.Tensor | None = None
    segments: torch.Tensor | None = None
    taid_t: float = 1.0
    aw: torch.Tensor | None = None


class SCDLossBase(LossFunctionBase):
    """Shared wiring: select label positions, check the teacher signal, call `compound_loss_from_logits`.

    DistillKit builds a loss as ``cls(**options)`` from its `loss_functions:` entry; only `temperature`
    applies to ours (any other option is an error, not silently ignored).
    """

    divergence = "forward_kl"
    alpha = 1.0  # pure divergence; DistillKit's per-loss `weight` mixes it with its `cross_entropy`

    def __init__(self, temperature: float | None = None, **unsupported) -> None:
        if unsupported:
            raise ValueError(f"loss_functions: {self.name()}: unsupported option(s) {sorted(unsupported)}; "
                             "only `weight` and `temperature` apply to this loss")
        self.spec = LossSpec(divergence=self.divergence, temperature=1.0 if temperature is None else temperature,
                             alpha=self.alpha)
        self.context: BatchContext | None = None  # bound by SCDDistillationTrainer
        self.last_parts: dict = {}

    def token_weights(self, student, teacher, targets, segments, keep):
        """(N,) distillation weight per label token, or None for `alpha` (AW overrides this)."""
        return None

    def __call__(self, student_outputs: CausalLMOutput, signal, mask: torch.Tensor | None = None,
                 hidden_state_mapping=None, num_items_in_batch=None) -> torch.Tensor:
        ctx = self.context
        if ctx is None or ctx.targets is None:
            raise RuntimeError(f"loss {self.name()!r} runs only through distillkit_scd: launch with "
                               "`python -m distillkit_scd.integrations.distillkit CONFIG`, not `distillkit CONFIG`")
        if not isinstance(signal, DenseSignal):
            raise ValueError(f"loss_functions: {self.name()}: needs full teacher logits (an online teacher "
                             f"without `teacher.top_k`), got a {type(signal).__name__}")
        logits = student_outputs.logits  # (B, T', V)
        if signal.logits.shape != logits.shape:
            raise ValueError(f"loss {self.name()}: teacher logits {tuple(signal.logits.shape)} and student logits "
                             f"{tuple(logits.shape)} differ; teacher and student must share one vocabulary")
        keep = ctx.targets != IGNORE_INDEX if mask is None else mask.reshape(ctx.targets.shape).bool()
        student, teacher, targets = logits[keep], signal.logits[keep], ctx.targets[keep]  # (N, V), (N, V), (N,)
        weights = self.token_weights(student, teacher, targets, ctx.segments[keep], keep)
        loss, self.last_parts = compound_loss_from_logits(student, teacher, targets, self.spec, weights=weights,
                                                          taid_t=ctx.taid_t, num_items=num_items_in_batch)
        return loss


class ReverseKLLoss(SCDLossBase):
    """KL(q_student ‖ p_teacher) per label token, token mean, times T²."""

    divergence = "reverse_kl"

    @classmethod
    def name(cls) -> str:
        return "reverse_kl"


class TAIDLoss(SCDLossBase):
    """TAID: KL(p_t ‖ q_student), p_t = softmax((1−t)·stopgrad(z_s) + t·z_t); t from the trainer's TAIDState."""

    divergence = "taid"

    @classmethod
    def name(cls) -> str:
        return "taid"


class AWKLLoss(SCDLossBase):
    """Σ_tokens [AW·KL(p‖q) + (1−AW)·CE] / N_tokens, AW = L_S / (L_S + L_T) per sample (paper section 6).

    The CE is inside this loss (each sample mixes its own): list it alone (weight 1) in `loss_functions`.
    Static AW (the paper's, `aw.source: table`): L_S and L_T^(j) come from the AW table computed once from
    the SFT student and each checkpoint before training; the trainer puts the active checkpoint's AW of each
    position's sample in the batch context. Online AW (ours, `aw.source: online`): the sample's summed CE
    under the current student and teacher, from this batch's logits.
    """

    alpha = 0.0  # unused: every token gets its sample's AW

    @classmethod
    def name(cls) -> str:
        return "scd_aw_kl"

    def token_weights(self, student, teacher, targets, segments, keep):
        if self.context.aw is not None:  # static: the table's AW of each token's sample
            return self.context.aw[keep]
        # (N,) token → sample; sequence CE of each sample under both models, then AW per sample.
        sample, inverse = torch.unique(segments, return_inverse=True)
        ce_s = F.cross_entropy(student.detach().float(), targets, reduction="none").double()
        ce_t = F.cross_entropy(teacher.detach().float(), targets, reduction="none").double()
        ls = torch.zeros(sample.shape[0], dtype=torch.float64, device=student.device).index_add_(0, inverse, ce_s)
        lt = torch.zeros_like(ls).index_add_(0, inverse, ce_t)
        return adaptive_weight(ls, lt)[inverse]


OUR_LOSS_CLASSES = (AWKLLoss, TAIDLoss, ReverseKLLoss)


def register_loss_classes() -> None:
    """Append our classes to DistillKit's `ALL_LOSS_CLASSES` list (in place; idempotent)."""
    for cls in OUR_LOSS_CLASSES:
        if cls not in ALL_LOSS_CLASSES:
            ALL_LOSS_CLASSES.append(cls)


# --------------------------------------------------------------------------------------------------
# Shifting (fix a) and packed-row segments.
# --------------------------------------------------------------------------------------------------


def shift_outputs(outputs: CausalLMOutput) -> CausalLMOutput:
    """Student outputs with logits[:, :-1] (position s predicts token s+1); hidden states untouched."""
    return CausalLMOutput(loss=outputs.loss, logits=outputs.logits[:, :-1], hidden_states=outputs.hidden_states)


def shift_signal(signal, length: int):
    """Teacher signal trimmed to the `length - 1` predicting positions; a signal already that long (offline
    captures drop the unconditioned first position) is returned as is."""
    if isinstance(signal, DenseSignal):
        if signal.logits.shape[1] == length:
            return dataclasses.replace(signal, logits=signal.logits[:, :-1])
    elif isinstance(signal, SparseSignal) and signal.sparse_ids.shape[1] == length:
        return dataclasses.replace(signal, sparse_ids=signal.sparse_ids[:, :-1],
                                   sparse_values=signal.sparse_values[:, :-1])
    return signal


def segment_ids(inputs: dict) -> torch.Tensor:
    """(B, T-1) id of the sample each predicting position belongs to: the row, or with `position_ids` the
    packed sample (a new one starts where the position restarts at 0)."""
    ids = inputs["input_ids"]
    batch, length = ids.shape
    rows = torch.arange(batch, device=ids.device).unsqueeze(1) * length  # (B, 1)
    pos = inputs.get("position_ids")
    if pos is None:
        seg = rows.expand(batch, length)
    else:
        seg = rows + torch.cumsum(pos == 0, dim=1)  # (B, T)
    # Position s predicts token s+1, which belongs to the sample of s+1.
    return seg[:, 1:]


# --------------------------------------------------------------------------------------------------
# The trainer.
# --------------------------------------------------------------------------------------------------


class SCDDistillationTrainer(StagedTrainerMixin, DistillationTrainer):
    """DistillKit's `DistillationTrainer` + our losses' context, TAID's t, the CD/SCD teacher schedule
    (a `StageCallback` swapping checkpoints into the online teacher in place) and fixes (a)–(d).

    Args (beyond DistillKit's): settings: the validated `distillkit_scd:` section (`IntegrationSettings`);
    aw_table: the static AW table `scd_aw_kl` reads (`distillkit_aw_table.build_table`), None for online AW.
    """

    def __init__(self, *args, settings, aw_table=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.batch_context = BatchContext()
        for fn in self.loss_functions:
            if isinstance(fn, SCDLossBase):
                fn.context = self.batch_context
        use_taid = any(isinstance(fn, TAIDLoss) for fn in self.loss_functions)
        self.taid_state = TAIDState.from_config(settings.taid) if use_taid else None
        self._prepare_teacher()
        self.stage_callback = self._schedule_callback()
        self.has_checkpoint_schedule = self.stage_callback is not None
        self._aw_collator = None
        self.aw_weights = self._static_aw(aw_table)
        sched = settings.schedule
        per_stage = self.stage_callback is not None and sched.lr_schedule == "per_stage"
        self.steps_per_stage = sched.steps_per_stage if per_stage else None  # LR restarts every stage
        self.active_checkpoint = 0
        self.add_callback(StepLossCallback(self))
        self.extra_state_callback = ExtraStateCallback(self, self.stage_callback)
        self.add_callback(self.extra_state_callback)

    # -- teacher (fix c) ------------------------------------------------------------------------------

    def _prepare_teacher(self) -> None:
        source = self.signal_source
        if isinstance(source, OnlineSignalSource) and self.is_deepspeed_enabled:
            logger.info("distillkit_scd: wrapping the online teacher in a DeepSpeed inference engine")
            source.teacher_model = place_teacher(source.teacher_model, self.accelerator, deepspeed=True)

    @property
    def teacher_model_module(self):
        """The plain online teacher module, for in-place checkpoint swaps (None for offline teachers)."""
        source = self.signal_source
        return unwrap(source.teacher_model) if isinstance(source, OnlineSignalSource) else None

    def _schedule_callback(self):
        sched = self.settings.schedule
        if sched.method == "none":
            return None
        from distillkit_scd.schedules.scd_selector import build_schedule
        from distillkit_scd.teachers.pool import CheckpointPool

        if self.teacher_model_module is None:
            raise ValueError("distillkit_scd.schedule: needs an online teacher (teacher.kind: hf)")
        pool = CheckpointPool(sched.manifest)
        from distillkit_scd.integrations.distillkit_checks import check_module_shapes

        check_module_shapes(self.teacher_model_module, pool)  # every checkpoint now, not when its stage starts
        probes = None
        if sched.method == "scd":
            from distillkit_scd.schedules.scd_selector import probe_batches

            probes = probe_batches(self.train_dataset, self.data_collator, sched.probe_size, sched.probe_seed,
                                   self.args.per_device_train_batch_size)
        schedule = build_schedule(sched.method, pool, self.teacher_model_module, probes, top_k=sched.top_k,
                                  chunk_size=sched.chunk_size)
        callback = StageCallback(self, sched.steps_per_stage, schedule=schedule, pool=pool,
                                 reset_optimizer=sched.reset_optimizer)
        self.add_callback(callback)
        return callback

    def get_train_dataloader(self):
        """Static AW: training batches go through the collator that tags each sample's AW table row."""
        if self.aw_weights is None:
            return super().get_train_dataloader()
        plain, self.data_collator = self.data_collator, self._aw_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = plain

    def _static_aw(self, aw_table):
        """Load the AW table, wrap the collator to tag each position with its sample's table row; returns the
        (S, N) float32 AW on the device (None for online AW)."""
        if aw_table is None:
            return None
        from distillkit_scd.integrations.distillkit_aw import AWRowCollator, rows_by_key
        from distillkit_scd.teachers.aw_table import AWTable

        table = AWTable.load(aw_table)
        self._aw_collator = AWRowCollator(self.data_collator, rows_by_key(table))  # train batches only
        logger.info("distillkit_scd: static AW from %s (%d samples x %d checkpoints)", aw_table, len(table.ids),
                    table.num_checkpoints)
        return table.weights.to(device=self.accelerator.device, dtype=torch.float32)

    def _teacher_signal(self, inputs: dict):
        # Fix (b), teacher side: DistillKit's OnlineSignalSource forwards only input_ids and attention_mask.
        # use_cache=False too: transformers builds the per-sample (block-diagonal) mask from position_ids only
        # when no KV cache is passed, and a teacher called with the default use_cache=True makes one.
        source = self.signal_source
        if not (isinstance(source, OnlineSignalSource) and "position_ids" in inputs):
            return source.get_signal(inputs, return_hidden_states=self.need_hidden_states)
        saved = source.teacher_kwargs
        source.teacher_kwargs = {"use_cache": False, **saved, "position_ids": inputs["position_ids"]}
        try:
            return source.get_signal(inputs, return_hidden_states=self.need_hidden_states)
        finally:
            source.teacher_kwargs = saved

    # -- loss ---------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        # Fix (b), student side: DistillKit forwards extra keyword arguments to the student model (no KV
        # cache either: see `_teacher_signal`).
        if "position_ids" in inputs:
            kwargs["position_ids"] = inputs["position_ids"]
            kwargs.setdefault("use_cache", False)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)

    def total_distillation_loss(self, student_outputs, inputs, num_items_in_batch=None):
        labels = inputs["labels"]  # (B, T)
        targets = labels[:, 1:]  # (B, T-1): position s predicts token s+1 (fix a)
        mask = (targets != IGNORE_INDEX).unsqueeze(-1)
        signal = self._teacher_signal(inputs)
        shifted_outputs, shifted_signal = shift_outputs(student_outputs), shift_signal(signal, labels.shape[1])
        ctx = self.batch_context
        ctx.targets, ctx.segments = targets, segment_ids(inputs)
        ctx.taid_t = self.taid_state.t if self.taid_state is not None else 1.0
        ctx.aw = None  # online AW: from this batch's logits
        if self.aw_weights is not None:
            from distillkit_scd.integrations.distillkit_aw import AW_ROWS

            if AW_ROWS in inputs:
                rows = inputs[AW_ROWS][:, 1:]  # (B, T-1): the sample of token s+1, which position s predicts
                ctx.aw = self.aw_weights[rows.clamp(min=0), self.active_checkpoint if self.stage_callback else 0]
            elif self.model.training:
                raise ValueError("scd_aw_kl (static AW): a training batch has no AW rows; the train dataloader's "
                                 "collator was replaced")
            # evaluation batches are not in the (train-split) table: their AW is computed online

        total, weights = 0.0, 0.0
        parts: dict[str, torch.Tensor] = {}
        taid_term = None
        for i, (cfg, fn) in enumerate(zip(self.config.loss_functions, self.loss_functions)):
            if fn.requires_hidden_states():  # hidden-state losses compare positions, not predictions
                loss = fn(student_outputs, signal, mask=(labels >= 0).unsqueeze(-1),
                          hidden_state_mapping=self.hidden_state_mapping, num_items_in_batch=num_items_in_batch)
            else:
                loss = fn(shifted_outputs, shifted_signal, mask=mask, hidden_state_mapping=self.hidden_state_mapping,
                          num_items_in_batch=num_items_in_batch)
            total = total + loss * cfg.weight
            weights += cfg.weight
            parts[f"distillation_loss/{i + 1}_{cfg.function.value}"] = loss.detach().float()
            if isinstance(fn, TAIDLoss):
                taid_term = loss.detach().float()
            if isinstance(fn, AWKLLoss) and fn.last_parts:
                parts["distillation_loss/aw_mean"] = fn.last_parts["weight_mean"].detach().float()
        total = total / weights
        if self.model.training:  # fix (d): no host sync here; the log line averages the micro-batches' parts
            self.step_sums.add(total.detach().float() / self.args.gradient_accumulation_steps, parts, 1.0,
                               distill=None if taid_term is None else (taid_term, 1.0))
        return total

    # -- staged optimisation and resume ---------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """Restore active checkpoint, TAID state and stage log from a checkpoint before resuming it."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if checkpoint:
            self.extra_state_callback.restore(Path(checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)
