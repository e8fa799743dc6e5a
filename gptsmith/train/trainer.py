"""The training loop (``Trainer``): one optimizer step at a time, with evaluation, samples,
checkpoints, exact resume, data parallelism and clean stops. ``config``, ``callbacks`` and
``evaluation`` hold the configuration, the hooks and result, and the loss; ``checkpointing`` and
``run_dir`` the run directory.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptsmith.config import to_dict
from gptsmith.data.tokenizer import as_tokenizer
from gptsmith.data.windows import count_windows
from gptsmith.device import autocast, resolve_autocast_dtype, resolve_device, set_seed, tune_cpu_allocator
from gptsmith.errors import ConfigError, DataError
from gptsmith.model.memory import check_train_memory
from gptsmith.storage import atomic_write_json
from gptsmith.train import checkpointing as ckpt
from gptsmith.train import run_log
from gptsmith.train.batches import FixedBatches, WindowSampler
from gptsmith.train.callbacks import TrainCallbacks, TrainResult, stop_signals
from gptsmith.train.config import TrainConfig, check_trainer_inputs, parse_duration
from gptsmith.train.distributed import (
    DistContext,
    all_reduce_mean,
    any_rank,
    barrier,
    init_distributed,
    signal_echo_s,
)
from gptsmith.train.evaluation import (
    NonFiniteLossError,
    evaluate,
    outputs_are_finite,
    perplexity,
    sample_text,
)
from gptsmith.train.losses import cross_entropy
from gptsmith.train.run_dir import divergence_advice, environment_info, replace_old_run
from gptsmith.train.schedule import build_optimizer, lr_at_step
from gptsmith.train.time_budget import PROBE_STEPS, BudgetWatch, recorded_plan
from gptsmith.train.training_state import capture_training_state, restore_training_state
from gptsmith.train.vocab_trim import start_trimmed_vocab


class Trainer:
    """Trains ``model`` on windows of ``train_tokens``, scoring ``val_tokens``; writes to ``run_dir``.

    ``tokenizer`` (optional) turns the periodic sample into text; ``run_dir=None`` trains without
    writing anything (tests, notebooks).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        train_tokens: np.ndarray,
        val_tokens: np.ndarray,
        *,
        run_dir: str | Path | None = None,
        tokenizer: Any = None,
        callbacks: TrainCallbacks | None = None,
        run_info: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        check_trainer_inputs(cfg, train_tokens, val_tokens)  # cfg.check() and the tokens' shape
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dist: DistContext = init_distributed(self.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.amp_dtype = resolve_autocast_dtype(cfg.dtype, self.device, model.cfg.emb_dim)
        self.context_length = cfg.context_length or model.cfg.context_length
        if self.context_length > model.cfg.context_length:
            raise ConfigError(
                f"--context-length {self.context_length} is longer than the model's context_length "
                f"{model.cfg.context_length} (lower it, or pick a preset with a longer context)"
            )
        check_train_memory(model.cfg, cfg.batch_size, self.context_length, self.device)  # before any step
        if self.device.type == "cpu":
            tune_cpu_allocator()  # 3-4x faster steps on Linux: no page faults for the big buffers
        self.model = model.to(self.device)
        self.model.train()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.overwrite = overwrite  # a run already in run_dir: replaced by a new one, else refused
        self._fit_started = False
        self.tokenizer = None if tokenizer is None else as_tokenizer(tokenizer)
        self.callbacks = callbacks or TrainCallbacks()
        self.run_info = run_info or {}

        world_batch_tokens = cfg.batch_size * self.context_length * self.dist.world_size
        self.accum_steps = 1
        if cfg.target_batch_tokens:
            self.accum_steps = max(1, math.ceil(cfg.target_batch_tokens / world_batch_tokens))
        self.tokens_per_step = world_batch_tokens * self.accum_steps

        # The one place the library seeds the training RNG (dropout draws from torch's global
        # generator); resume() then replaces it with the checkpoint's. The weights were drawn
        # before the model came here: seed before building it (the CLI does) to fix them too.
        set_seed(cfg.seed)
        self.sampler = WindowSampler(train_tokens, self.context_length, cfg.batch_size, seed=cfg.seed,
                                     rank=self.dist.rank, world_size=self.dist.world_size)
        # Tokens the training split never holds share one head row (vocab_trim.py), re-tied after
        # every optimizer step; None when trimming is off or the corpus uses every token.
        self.trimmed_vocab = (start_trimmed_vocab(self.model, train_tokens, self.device)
                              if cfg.trim_vocab else None)
        if self.trimmed_vocab is not None:
            self.run_info["trim_vocab"] = {"used_tokens": self.trimmed_vocab.n_used,
                                           "vocab_size": self.trimmed_vocab.vocab_size}
        val_windows = count_windows(len(val_tokens), self.context_length, self.context_length)
        if val_windows == 0:
            raise DataError(
                f"the validation split has {len(val_tokens):,} tokens, fewer than one window of "
                f"context_length {self.context_length} + 1 (raise --val-fraction, now {cfg.val_fraction}, "
                "lower --context-length, or use more data)"
            )
        # Scored with the global batch size, so the numbers do not depend on the number of processes.
        eval_batch = min(cfg.batch_size * self.dist.world_size, val_windows)
        self.train_eval = FixedBatches(train_tokens, self.context_length, eval_batch, cfg.eval_batches)
        self.val_eval = FixedBatches(val_tokens, self.context_length, eval_batch, cfg.eval_batches)

        self.optimizer = build_optimizer(self.model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                         betas=tuple(cfg.betas), optimizer=cfg.optimizer,
                                         muon_ns_steps=cfg.muon_ns_steps)
        self.train_model: torch.nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)

        self.step = 0
        self.tokens_seen = 0
        self.best_val_loss: float | None = None
        self.best_step: int | None = None
        self.last_val_loss: float | None = None
        self.last_checkpoint: Path | None = None
        self.resumed_from: Path | None = None
        self._stop_signal: str | None = None

    # --- Resume -----------------------------------------------------------------------------

    def resume(self, *, fallback: bool = False, found: tuple[dict, list] | None = None) -> list[str]:
        """Load the run's latest checkpoint (or, with ``fallback``, its newest good one).

        ``found`` is what ``checkpointing.find_resume_checkpoint`` returned, when the caller already
        looked (the CLI does, to load the checkpoint's tokenizer first). Returns the problems
        skipped with ``fallback`` (those checkpoints are renamed ``corrupt-step-N``). Raises
        ``CheckpointError`` naming the path of a corrupt/partial checkpoint, or the fields whose
        model config differs.
        """
        if self.run_dir is None:
            raise ConfigError("resume needs a run directory")
        loaded, skipped = found or ckpt.find_resume_checkpoint(self.run_dir, fallback=fallback)
        problems = []
        for bad, message in skipped:
            if bad.exists():  # (a `latest` may name a checkpoint that is gone: nothing to rename)
                message += f" [renamed corrupt-{bad.name}]"
                if self.dist.is_main:
                    ckpt.quarantine_checkpoint(bad)
            problems.append(message)
        path = loaded["path"]
        ckpt.check_model_config(loaded["config"]["model"], self.model.cfg.to_dict(), path)
        restore_training_state(self, loaded["state"], path)
        ckpt.load_checkpoint_weights(self.model, loaded["weights"], path)
        self.last_checkpoint = self.resumed_from = path
        plan = recorded_plan(self.run_dir / ckpt.RUN_FILE)
        if self.cfg.time_budget is not None and plan:  # a budgeted run resumes its sized schedule
            self.cfg = self.cfg.replace(max_steps=plan["max_steps"], warmup_steps=plan["warmup_steps"])
            self.run_info["time_budget"] = plan
        if self.dist.is_main:  # the run directory as it was when this checkpoint was written
            ckpt.write_pointer(self.run_dir, "latest", ckpt.checkpoint_name(self.step))
            ckpt.restore_best_pointer(self.run_dir, self.best_step)
            run_log.truncate_metrics(self.run_dir, self.step)
            run_log.truncate_samples(self.run_dir, self.step)
        return problems

    def request_stop(self, reason: str = "requested") -> None:
        """Stop after the current step, with a checkpoint (what Ctrl-C and SIGTERM do)."""
        self._stop_signal = reason

    @property
    def stop_requested(self) -> bool:
        return self._stop_signal is not None

    # --- The loop ---------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train until ``max_steps`` (or a stop signal); returns what happened."""
        cfg = self.cfg
        result = TrainResult(step=self.step, tokens_seen=self.tokens_seen, stopped="max_steps")
        is_main = self.dist.is_main
        fresh = self.step == 0 and self.resumed_from is None and not self._fit_started
        self._fit_started = True
        if fresh and self.run_dir is not None:
            replace_old_run(self.run_dir, overwrite=self.overwrite, is_main=is_main)
            barrier(self.dist)  # every process looks for an old run before the main one writes the new one
        if is_main and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_run_info()  # on resume too: a new --max-steps must stick for the next resume
        if is_main:
            self.callbacks.on_start({
                "start_step": self.step, "max_steps": cfg.max_steps, "tokens_per_step": self.tokens_per_step,
                "accum_steps": self.accum_steps, "device": str(self.device),
                "world_size": self.dist.world_size,
                "dtype": "bf16 autocast" if self.amp_dtype else "fp32", "resumed_from": self.resumed_from,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "trim_vocab": self.run_info.get("trim_vocab"),
            })
        clock = time.perf_counter()  # a --time-budget counts from here
        budget = None  # a new budgeted run's clock (time_budget.py)
        if cfg.time_budget is not None and self.step == 0 and self.resumed_from is None:
            budget = BudgetWatch(parse_duration(cfg.time_budget), clock)
            self.cfg = cfg.replace(max_steps=max(cfg.max_steps, PROBE_STEPS + 1))  # until it is sized

        with stop_signals(self, echo_s=signal_echo_s()):  # torchrun sends each Ctrl-C twice
            if self.step == 0 and self.resumed_from is None:
                result.evals.append(self._evaluate())  # the untrained baseline: about ln(vocab_size)
            eval_s = time.perf_counter() - clock
            while self.step < self.cfg.max_steps:
                loss, lr, grad_norm, seconds = self._train_step()
                result.losses.append(loss)
                if budget is not None:
                    budget.after_step(self, seconds, eval_s)  # sizes the schedule, then keeps it in time
                cfg = self.cfg
                eval_every, checkpoint_every, sample_every = cfg.intervals()
                if is_main:
                    info = {"step": self.step, "loss": loss, "lr": lr, "tokens_seen": self.tokens_seen,
                            "tokens_per_s": self.tokens_per_step / seconds, "grad_norm": grad_norm}
                    if self.run_dir is not None and (self.step % max(1, cfg.log_every) == 0):
                        run_log.append_metrics(self.run_dir, {"kind": "train", **info})
                    self.callbacks.on_step(info)
                stop = any_rank(self._stop_signal is not None, self.dist, self.device)
                last = self.step == cfg.max_steps
                new_best = False
                if last or self.step % eval_every == 0:
                    result.evals.append(self._evaluate())
                    new_best = result.evals[-1]["best"]
                if sample_every and is_main and (last or self.step % sample_every == 0):
                    self._sample()
                # A new best validation loss is always saved, so `best` names a checkpoint that exists.
                if last or stop or new_best or self.step % checkpoint_every == 0:
                    self._save_checkpoint()
                if stop:
                    result.stopped = "interrupted"
                    break
        barrier(self.dist)
        result.step, result.tokens_seen = self.step, self.tokens_seen
        result.last_checkpoint, result.best_val_loss = self.last_checkpoint, self.best_val_loss
        return result

    def _train_step(self) -> tuple[float, float, float | None, float]:
        """One optimizer step over ``accum_steps`` micro-batches; returns (loss, lr, grad norm, seconds)."""
        cfg = self.cfg
        started = time.perf_counter()
        lr = lr_at_step(self.step, peak_lr=cfg.lr, min_lr=cfg.floor_lr, warmup_steps=cfg.warmup_steps,
                        max_steps=cfg.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accum_steps):
            inputs, targets = self.sampler.next_batch()
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            # DDP all-reduces gradients in backward; skip that on all but the last micro-batch.
            sync = contextlib.nullcontext()
            if self.dist.enabled and micro < self.accum_steps - 1:
                sync = self.train_model.no_sync()
            with sync:
                with autocast(self.device, self.amp_dtype):
                    loss = self._loss(inputs, targets)
                (loss / self.accum_steps).backward()
            loss_sum += loss.detach()
        mean_loss = all_reduce_mean(loss_sum / self.accum_steps, self.dist).item()
        if not math.isfinite(mean_loss):
            self._raise_non_finite("training loss", mean_loss, lr)
        grad_norm = None
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip).item()
            if not math.isfinite(grad_norm):
                self._raise_non_finite("training gradient norm", grad_norm, lr)
        self.optimizer.step()
        if self.trimmed_vocab is not None:
            self.trimmed_vocab.tie_rows(self.model.out_head.weight)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        return mean_loss, lr, grad_norm, time.perf_counter() - started

    def _loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of one micro-batch: inputs and targets (batch, n_tokens)."""
        smoothing = self.cfg.label_smoothing
        if self.trimmed_vocab is None:
            logits = self.train_model(inputs)  # (batch, n_tokens, vocab_size)
            return cross_entropy(logits.flatten(0, 1), targets.flatten(), label_smoothing=smoothing)
        logits = self.train_model(inputs, head_rows=self.trimmed_vocab.rows)  # (batch, n_tokens, n_used + 1)
        return self.trimmed_vocab.cross_entropy(logits.flatten(0, 1), targets.flatten(), smoothing)

    def _raise_non_finite(self, what: str, value: float, lr: float, *, updated: bool = False) -> None:
        when = (f"after the update of step {self.step}; stopped without saving" if updated
                else f"at step {self.step + 1}; stopped before updating the weights")
        # Before an update, the weights that failed are step `self.step`'s (maybe checkpointed).
        advice = divergence_advice(self.run_dir, None if updated else self.step,
                                        lr=self.cfg.lr, grad_clip=self.cfg.grad_clip)
        raise NonFiniteLossError(f"{what} became {value} {when} (lr {lr:.3g}); {advice}")

    def _current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # --- Evaluation, samples, checkpoints ---------------------------------------------------

    def _evaluate(self) -> dict[str, Any]:
        # Every rank scores the same fixed batches with its own (identical) replica: no collective
        # needed, and every rank agrees on the best checkpoint.
        train_loss, val_loss = evaluate(self.model, self.train_eval, self.val_eval, self.cfg.eval_batches,
                                        device=self.device, amp_dtype=self.amp_dtype)
        for what, value in (("validation loss", val_loss), ("train loss (eval)", train_loss)):
            if not math.isfinite(value):  # the last update broke the weights: never save or sample them
                self._raise_non_finite(what, value, self._current_lr(), updated=self.step > 0)
        self.last_val_loss = val_loss
        info = {"step": self.step, "tokens_seen": self.tokens_seen, "train_loss": train_loss,
                "val_loss": val_loss, "val_ppl": perplexity(val_loss)}
        is_best = self.best_val_loss is None or val_loss < self.best_val_loss
        if is_best:
            self.best_val_loss, self.best_step = val_loss, self.step
        info["best"] = is_best
        if self.dist.is_main:
            if self.run_dir is not None:
                run_log.append_metrics(self.run_dir, {"kind": "eval", **info})
                self._plot()
            self.callbacks.on_eval(info)
        return info

    def _plot(self) -> None:
        from gptsmith.train.plots import plot_losses

        path = self.run_dir / ckpt.LOSS_PLOT
        with ckpt.storage_errors(path):
            plot_losses(run_log.read_metrics(self.run_dir), path)

    def _sample(self) -> None:
        if self.tokenizer is None:
            return
        text = self._sample_text()
        if self.run_dir is not None:
            run_log.append_sample(self.run_dir, self.step, self.tokens_seen, text)
        self.callbacks.on_sample(self.step, text)

    def _sample_text(self) -> str:
        """The sample continuation of the prompt at this step (nothing written, global RNG untouched)."""
        return sample_text(self.model, self.tokenizer, self.cfg, step=self.step,
                           context_length=self.context_length, device=self.device)

    def _save_checkpoint(self) -> None:
        # Checked on every rank (their weights are identical), so under DDP all of them stop together.
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            self._raise_non_finite("a weight", float("nan"), self._current_lr(), updated=True)
        # Finite weights may still give NaN logits: `latest` must never name such a checkpoint.
        if not outputs_are_finite(self.model, self.val_eval, device=self.device, amp_dtype=self.amp_dtype):
            self._raise_non_finite("the model's output", float("nan"), self._current_lr(), updated=True)
        if self.run_dir is None or not self.dist.is_main:
            return
        path = ckpt.save_checkpoint(self.run_dir, self.model, capture_training_state(self), step=self.step,
                                    tokenizer=self.tokenizer or self.cfg.tokenizer,
                                    extra={"tokens_seen": self.tokens_seen, "val_loss": self.last_val_loss})
        best = ckpt.checkpoint_name(self.best_step) if self.best_step is not None else None
        if self.best_step == self.step:
            ckpt.write_pointer(self.run_dir, "best", best)
        ckpt.prune_checkpoints(self.run_dir, self.cfg.keep_last, keep=[best] if best else [])
        self.last_checkpoint = path
        self.callbacks.on_checkpoint(self.step, path)

    def _write_run_info(self) -> None:
        info = {"model": self.model.cfg.to_dict(), "train": to_dict(self.cfg), "seed": self.cfg.seed,
                "versions": environment_info(), "world_size": self.dist.world_size, **self.run_info}
        path = self.run_dir / ckpt.RUN_FILE
        with ckpt.storage_errors(path):
            atomic_write_json(path, info)
