"""`DistillationTrainer`: TRL's `SFTTrainer` with a frozen teacher and our chunked compound loss.

Only `compute_loss` changes. The student's decoder runs on the batch (no lm_head call, so no (B, T, V)
logits); the teacher's decoder runs under `no_grad` on the same `input_ids`, `attention_mask` and
`position_ids`. Hidden states are taken at label positions only and handed, with the lm_head weights, to
`losses.chunked_compound_loss`. With no teacher the same path is plain SFT (chunked CE), which is how the
SFT stage trains too.

Launch modes. All of that runs as the student's forward, called through its wrapper (`call_as_forward`,
the forward redirection of Lightning and TRL), and the teacher's decoder through the teacher's DeepSpeed
engine when it has one. DDP then prepares its gradient reduction as for any forward. Under ZeRO-3 the loss
reads lm_head weights outside the lm_head's own forward, where they are empty placeholders: the student's
are registered as external parameters of its root module, so the engine gathers them for this forward and
again for its backward (the gradient is accumulated into the whole parameter, then reduce-scattered); the
teacher's (no gradient) are gathered for the loss call by `gathered_for_loss`. tests/test_launch_modes.py
shows plain Python, accelerate (1 and 2 processes) and ZeRO-3 (2 processes) give the same losses.

Every distillation row shares the CD infrastructure (paper): the optimizer state is cleared every T
optimizer steps (`callbacks.StageCallback`; exactly a fresh AdamW: its step count and moments live in the
state). With `steps_per_stage` set (`distill.lr_schedule: per_stage`, ours) the learning-rate schedule
also restarts every T steps (`schedules/lr.py`); by default it runs once over the whole N×T run. The
schedule is a pure function of the global step, so a resumed run continues it exactly.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from trl import SFTTrainer

from distillkit_scd.config.launch import check_world_size, check_zero3_saves_weights
from distillkit_scd.losses import LossSpec, chunked_compound_loss, label_positions
from distillkit_scd.losses.chunk_kernel import Workspace
from distillkit_scd.losses.compiled_kernel import resolve_compile_loss
from distillkit_scd.losses.liger_loss import check_liger_available, liger_applies, liger_compound_loss
from distillkit_scd.models.loading import check_plain_lm_head
from distillkit_scd.training.trainer_base import StagedTrainerMixin
from distillkit_scd.utils.distributed import (
    call_as_forward,
    gathered_for_loss,
    place_teacher,
    register_external_params,
    unwrap,
)

logger = logging.getLogger(__name__)

_BATCH_KEYS = ("input_ids", "attention_mask", "position_ids")


class DistillationTrainer(StagedTrainerMixin, SFTTrainer):
    """SFTTrainer + frozen teacher + compound loss (TD, TAID, AW; CE only when `teacher_model` is None).

    Args:
        teacher_model: the frozen teacher (same vocabulary), or None for SFT.
        loss_spec (`LossSpec`): divergence, temperature, α and chunk size.
        use_aw (`bool`): weight each sample's distillation term by its AW (batch column `aw`, (B, N)) for
            the active checkpoint instead of α.
        taid_state (`TAIDState`, *optional*): supplies t for the TAID divergence.
        steps_per_stage (`int`, *optional*): T; the LR schedule restarts every T steps (per_stage).
        teacher_signals (`list[SignalCache]`, *optional*): cached top-k teacher signals per checkpoint.
        fused_loss (`str`, defaults to `"none"`): "liger" computes training losses with Liger-Kernel's
            fused loss where it is exact (`liger_loss.liger_applies`), ours elsewhere.
        compile_loss (`str | bool`, defaults to `"auto"`): run the loss's per-chunk element-wise work through
            torch.compile (`compiled_kernel`); auto = on CUDA only.
    """

    def __init__(self, *args, teacher_model=None, loss_spec: LossSpec | None = None, use_aw: bool = False,
                 taid_state=None, steps_per_stage: int | None = None, teacher_signals=None,
                 fused_loss: str = "none", compile_loss: str | bool = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        check_plain_lm_head(unwrap(self.model), "student")
        check_world_size(self.accelerator.num_processes)
        # Our compute_loss divides by transformers' `num_items_in_batch` (the accumulated batch's label
        # tokens) for every model. Models that declare `accepts_loss_kwargs = False` would otherwise get no
        # count and have each micro-batch's loss divided by the accumulation steps again (not token-exact).
        self.model_accepts_loss_kwargs = True
        if self.is_deepspeed_enabled:
            check_zero3_saves_weights(self.accelerator.state.deepspeed_plugin.deepspeed_config)
        self.loss_spec = loss_spec or LossSpec(alpha=0.0)
        self.use_aw = use_aw
        self.taid_state = taid_state
        self.steps_per_stage = steps_per_stage
        self.active_checkpoint = 0
        # Cached teacher signals (one `signal_cache.SignalCache` per checkpoint) replace the online
        # teacher in the loss when given; `teacher_forward_rows` counts the rows the online teacher ran on.
        self.teacher_signals = teacher_signals
        if fused_loss not in ("none", "liger"):
            raise ValueError(f"fused_loss: expected 'none' or 'liger', got {fused_loss!r}")
        if fused_loss == "liger":
            check_liger_available()
        self.use_liger = fused_loss == "liger" and liger_applies(self.loss_spec.divergence, use_aw,
                                                                   teacher_signals is not None)
        self.teacher_forward_rows = 0
        self.teacher_eval_rows = 0  # of which for the validation loss
        # CPU: the loss's three (chunk, V) buffers live as long as the trainer (fresh ones cost page faults
        # every micro-batch); CUDA's caching allocator already reuses blocks, so buffers there are per call.
        self._loss_workspace = Workspace() if self.accelerator.device.type == "cpu" else None
        self.compile_loss = resolve_compile_loss(compile_loss, self.accelerator.device)
        self._eval_sums = torch.zeros(2)  # (Σ loss·tokens, tokens) of the running evaluation
        self.teacher_model = None
        if teacher_model is not None:
            self.set_teacher(teacher_model)

    @property
    def has_checkpoint_schedule(self) -> bool:
        """With a teacher, `active_checkpoint` indexes the teacher SFT's checkpoints (logged per line)."""
        return self.teacher_model is not None

    # -- teacher ------------------------------------------------------------------------------------

    def set_teacher(self, teacher_model) -> None:
        """Freeze the teacher and place it like the student: DeepSpeed-prepared under ZeRO (a teacher
        loaded after a ZeRO-3 config exists is partitioned and unusable raw), on the device otherwise."""
        check_plain_lm_head(unwrap(teacher_model), "teacher")
        teacher_model.eval()
        teacher_model.requires_grad_(False)
        self.teacher_model = place_teacher(teacher_model, self.accelerator, self.is_deepspeed_enabled)

    @property
    def teacher_model_module(self):
        """The plain teacher module (inside any DeepSpeed engine), for in-place checkpoint swaps."""
        return None if self.teacher_model is None else unwrap(self.teacher_model)

    # -- loss ---------------------------------------------------------------------------------------

    def _token_weights(self, inputs: dict, flat_idx: torch.Tensor, length: int):
        if not self.use_aw:
            return None
        aw = inputs.get("aw")
        if aw is None and not self.model.training:
            return None  # validation rows have no AW (it is defined on train samples): use α
        if aw is None:
            raise ValueError("use_aw=True but the batch has no `aw` column; attach the AW table to the dataset")
        rows = torch.div(flat_idx, length, rounding_mode="floor")
        return aw[rows, self.active_checkpoint].to(torch.float32)  # each token gets its sample's AW

    def _decoder_hidden(self, model, batch: dict):
        """Final-normed hidden states (B, T, H) of `model`'s decoder; no lm_head, so no (B, T, V) logits."""
        with self.accelerator.autocast():  # mixed precision as the wrapped forward would have it
            return model.get_decoder()(**batch, use_cache=False)

    def _loss_in_forward(self, student, inputs, num_items_in_batch):
        labels = inputs["labels"]
        batch = {k: inputs[k] for k in _BATCH_KEYS if k in inputs}
        batch_size, length = labels.shape
        flat_idx, targets = label_positions(labels)
        outputs = self._decoder_hidden(student, batch)
        student_hidden = outputs.last_hidden_state.reshape(batch_size * length, -1)[flat_idx]  # (N, H)
        student_head = student.get_output_embeddings()

        teacher_hidden = teacher_head = signal = None
        if self.teacher_signals is not None and self.model.training:
            signal = self.teacher_signals[self.active_checkpoint].for_rows(inputs["sample_index"], labels.device)
        elif self.teacher_model is not None:
            teacher = unwrap(self.teacher_model)
            with torch.no_grad():  # through its DeepSpeed engine when it has one, so its ZeRO-3 hooks run
                t_out = call_as_forward(self.teacher_model, teacher, self._decoder_hidden, teacher, batch)
            teacher_hidden = t_out.last_hidden_state.reshape(batch_size * length, -1)[flat_idx]  # (N, H_t)
            teacher_head = teacher.get_output_embeddings()
            self.teacher_forward_rows += batch_size
            self.teacher_eval_rows += 0 if self.model.training else batch_size

        taid_t = self.taid_state.t if self.taid_state is not None else 1.0
        t_weight, t_bias = (None, None) if teacher_head is None else (teacher_head.weight, teacher_head.bias)
        # ZeRO-3: the teacher's head (read-only, no gradient) is gathered here; the student's already is.
        weights = self._token_weights(inputs, flat_idx, length)
        with gathered_for_loss(student_head.weight, student_head.bias, t_weight, t_bias):
            if self.use_liger and teacher_hidden is not None and torch.is_grad_enabled():  # (no AW: use_liger)
                loss, parts = liger_compound_loss(
                    student_hidden, student_head.weight, targets, self.loss_spec, teacher_hidden, t_weight,
                    num_items=num_items_in_batch, student_bias=student_head.bias, teacher_bias=t_bias)
            else:
                loss, parts = chunked_compound_loss(
                    student_hidden, student_head.weight, targets, self.loss_spec, teacher_hidden, t_weight,
                    teacher_signal=signal, weights=weights, taid_t=taid_t, num_items=num_items_in_batch,
                    student_bias=student_head.bias, teacher_bias=t_bias, workspace=self._loss_workspace,
                    compiled=self.compile_loss,
                )
        return loss, parts, outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "sample_index" in inputs:
            self.last_batch_ids = inputs["sample_index"]  # kept as a tensor; listed only on error
        student = unwrap(model)
        head = student.get_output_embeddings()  # ZeRO-3: the loss reads it outside the lm_head's own forward
        register_external_params(student, head.weight, head.bias)
        # The whole loss runs as the student's forward, called through its wrapper: DDP prepares its
        # gradient reduction, and a ZeRO-3 engine keeps the lm_head (registered as an external parameter of
        # the root module) gathered for the loss and gathers it again for the backward, so its gradient is
        # accumulated into a whole parameter and then reduce-scattered.
        loss, parts, outputs = call_as_forward(model, student, self._loss_in_forward, student, inputs,
                                               num_items_in_batch)
        tokens = torch.tensor(float(parts["tokens"]), device=loss.device)
        if not self.model.training:  # evaluation: keep this batch's loss sum and tokens (`evaluation_loop`)
            denom = tokens if num_items_in_batch is None else num_items_in_batch
            denom = torch.as_tensor(denom, dtype=torch.float32, device=loss.device).clamp_min(1)
            self._eval_sums = self._eval_sums.to(loss.device) + torch.stack([loss.detach().float() * denom, tokens])
        # num_items_in_batch counts every rank's tokens while DDP averages gradients over ranks.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        if self.model.training:
            self._add_step_sums(loss, parts, tokens)
        return (loss, outputs) if return_outputs else loss

    def evaluation_loop(self, *args, **kwargs):
        """transformers averages per-batch mean losses weighted by rows, so `eval_loss` (which picks
        p(best)) would depend on the eval batch size and process count; report the token mean over the
        whole split instead (sums reduced over processes)."""
        self._eval_sums = torch.zeros(2)
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        total, tokens = self.accelerator.reduce(self._eval_sums.to(self.accelerator.device), reduction="sum").tolist()
        if tokens > 0 and f"{prefix}_loss" in output.metrics:
            output.metrics[f"{prefix}_loss"] = total / tokens
        return output

    def _add_step_sums(self, loss: torch.Tensor, parts: dict, tokens: torch.Tensor) -> None:
        """The logged parts are token means (Σ over label tokens / label tokens) of the CE term, and with a
        teacher of the distillation term and its weight (α or AW); TAID reads the step's distillation term."""
        distill = parts["distill_sum"].detach().float()
        fields = {"loss_ce": parts["ce_sum"].detach().float()}
        if self.teacher_model is not None:
            fields.update(loss_distill=distill, loss_mean_weight=parts["weight_sum"].detach().float())
        self.step_sums.add(loss.detach().float(), fields, tokens,
                           distill=(distill, tokens) if self.taid_state is not None else None)

    # -- staged optimisation ------------------------------------------------------------------------

    def extra_state(self) -> dict[str, Any]:
        """The mixin's resume state plus the teacher's validation-row count."""
        return {**super().extra_state(), "teacher_eval_rows": self.teacher_eval_rows}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.teacher_eval_rows = int(state.get("teacher_eval_rows", 0))
