"""The best model a time budget buys: a recipe against nanoGPT's shakespeare settings, back to back.

Each candidate trains on tinyshakespeare (GPT-2 BPE) for the same wall-clock budget with
gptsmith's ``Trainer`` and ``time_budget`` (the schedule sized to end within it), one after the
other in this process, on this machine. Then, for each:

- validation loss over every window of the last 10% of tinyshakespeare (never trained on);
- loss on English it never saw: ``the-verdict.txt`` (5.1k tokens) and the first 65,536 tokens
  of ``tinystories_val_first1000.txt`` (../shared/data), every non-overlapping window at the
  model's own context length.

Candidates:

- ``recipe``: ``gptsmith train --recipe tinyshakespeare`` (``--recipe`` picks another, and
  ``--set FIELD=VALUE`` changes one of its settings: how the variants in BENCHMARKS.md were run);
- ``nanogpt``: nanoGPT's ``config/train_shakespeare_char.py`` adapted to GPT-2 BPE with bf16
  autocast: 6 layers x 384, 6 heads, context 256, dropout 0.2, no biases in the QKV projection,
  tied head, batch 64 (4 accumulated micro-batches of 16), lr 1e-3 -> 1e-4, warm-up 100 steps
  (fewer if the budget buys fewer than 1,000 steps: a tenth of the run), AdamW betas (0.9, 0.99),
  weight decay 0.1, clipping 1.0.

The machine's load (``uptime``) is printed before and after each run: on a shared machine a run
gets less compute than on a quiet one.

    python -m benchmarks budget --minutes 10
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import REPO_ROOT, base_parser, write_report
from gptsmith.config import parse_assignments
from gptsmith.data.tokenizer import get_tokenizer
from gptsmith.errors import ConfigError
from gptsmith.model.gpt import GPTConfig, GPTModel
from gptsmith.train.batches import FixedBatches
from gptsmith.train.config import TrainConfig
from gptsmith.train.evaluation import calc_loss_loader
from gptsmith.train.recipes import get_recipe
from gptsmith.train.run import prepare_splits
from gptsmith.train.trainer import Trainer

DATA = REPO_ROOT.parent / "shared" / "data"
UNSEEN = ("the-verdict.txt", "tinystories_val_first1000.txt")
UNSEEN_TOKENS = 65_536  # each unseen text is scored on (at most) its first this many tokens
NANOGPT_MODEL = dict(context_length=256, emb_dim=384, n_heads=6, n_layers=6, drop_rate=0.2, qkv_bias=False)
# nanoGPT's batch of 64 x 256 as 4 accumulated micro-batches of 16: one batch of 64 would need
# ~23 GiB for its GPT-2-vocabulary logits on this 24 GiB machine (the trainer refuses it up front).
NANOGPT_TRAIN = dict(batch_size=16, target_batch_tokens=64 * 256, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                     betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0, eval_every=250, eval_batches=10,
                     dtype="bf16")


def candidate_configs(name: str, recipe_name: str,
                      changes: dict | None = None) -> tuple[GPTConfig, TrainConfig]:
    """(model, train) configs of one candidate, without its time budget.

    ``changes`` (the recipe's only) maps field names to values; a name is looked up in
    ``GPTConfig`` and ``TrainConfig``, and ``model.``/``train.`` in front of it picks one.
    """
    if name == "nanogpt":
        return (GPTConfig.from_preset("gpt2-small", **NANOGPT_MODEL),
                TrainConfig(data="tinyshakespeare", **NANOGPT_TRAIN))
    recipe = get_recipe(recipe_name)
    model_values, train_values = dict(recipe["model"]), dict(recipe["train"])
    model_fields = {f.name for f in dataclasses.fields(GPTConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in (changes or {}).items():
        section, _, field = key.rpartition(".")
        owners = [values for values, fields, label in ((model_values, model_fields, "model"),
                                                       (train_values, train_fields, "train"))
                  if field in fields and section in ("", label)]
        if not owners:
            raise ConfigError(f"--set {key}: no model or train config field {field!r} "
                              "(see gptsmith train --help)")
        if len(owners) > 1:
            raise ConfigError(f"--set {key}: both configs have {field!r}; "
                              f"write model.{field} or train.{field}")
        owners[0][field] = value
    return GPTConfig.from_preset(recipe["preset"], **model_values), TrainConfig(**train_values)


def window_loss(model: torch.nn.Module, tokens: np.ndarray, batch_size: int = 8) -> float:
    """Mean next-token loss over every non-overlapping window of ``tokens`` at the model's context."""
    context = model.cfg.context_length
    if len(tokens) <= context:
        context = len(tokens) - 1
    batches = FixedBatches(tokens, context, batch_size, None)
    if len(batches) == 0:
        batches = FixedBatches(tokens, context, 1, None)
    model.eval()
    with torch.inference_mode():
        return calc_loss_loader(batches, model)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def run_candidate(name: str, recipe_name: str, seconds: float, tokenizer, splits, unseen,
                  save_dir: str | None = None, changes: dict | None = None) -> dict:
    model_cfg, train_cfg = candidate_configs(name, recipe_name, changes)
    train_cfg = train_cfg.replace(time_budget=seconds, device="cpu", sample_every=0)
    torch.manual_seed(train_cfg.seed)
    model = GPTModel(model_cfg)
    load_before = uptime()
    started = time.perf_counter()
    trainer = Trainer(model, train_cfg, *splits)
    result = trainer.fit()
    wall = time.perf_counter() - started
    figures = {"wall_s": wall, "steps": result.step, "tokens": result.tokens_seen,
               "plan": trainer.run_info.get("time_budget", {}), "load_before": load_before,
               "load_after": uptime(), "params": model.num_parameters(),
               "val": window_loss(model, splits[1])}
    for file_name, tokens in unseen.items():
        figures[file_name] = window_loss(model, tokens)
    if save_dir is not None:
        from gptsmith.model.checkpoint import save_model

        save_model(model, Path(save_dir) / name, tokenizer=tokenizer)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], __name__)
    parser.add_argument("--minutes", type=float, default=10.0, help="budget of each run (default 10)")
    parser.add_argument("--recipe", default="tinyshakespeare", help="recipe to compare")
    parser.add_argument("--candidates", nargs="+", default=["recipe", "nanogpt"],
                        choices=["recipe", "nanogpt"], help="which runs, in order (default: both)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="changes",
                        help="change one model or train setting of the recipe (repeatable), e.g. --set "
                             "lr=3e-3 --set drop_rate=0.3 (model.FIELD or train.FIELD where both have it)")
    parser.add_argument("--save-dir", help="save each trained model to SAVE_DIR/NAME (for gptsmith generate)")
    args = parser.parse_args(argv)
    try:
        changes = parse_assignments(args.changes)
        candidate_configs("recipe", args.recipe, changes)[1].check()  # fail now, not after a 10-minute run
    except ConfigError as exc:
        parser.error(str(exc))
    missing = [n for n in UNSEEN if not (DATA / n).is_file()]
    if missing:
        parser.error(f"missing {', '.join(missing)} in {DATA} (the shared data folder)")
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = get_tokenizer("gpt2")
    train_tokens, val_tokens, _ = prepare_splits("tinyshakespeare", tokenizer)
    unseen = {n: np.array(tokenizer.encode((DATA / n).read_text(encoding="utf-8"))[:UNSEEN_TOKENS],
                          dtype=np.int64) for n in UNSEEN}
    lines = [f"== budget: {args.minutes:g} min per run on tinyshakespeare, back to back, "
             f"{torch.get_num_threads()} threads =="]
    results = {}
    for name in args.candidates:
        changed = "".join(f" --set {k}={v}" for k, v in changes.items())
        label = (f"recipe {args.recipe}{changed}" if name == "recipe"
                 else "nanoGPT shakespeare_char settings (BPE)")
        figures = run_candidate(name, args.recipe, args.minutes * 60, tokenizer, (train_tokens, val_tokens),
                                unseen, args.save_dir,
                                changes if name == "recipe" else None)
        results[name] = figures
        plan = figures["plan"]
        lines += [
            f"{name}: {label}, {figures['params'] / 1e6:.1f}M parameters",
            f"  {figures['steps']} steps ({plan.get('step_s', math.nan):.3f} s each when sized), "
            f"{figures['tokens']:,} tokens ({figures['tokens'] / len(train_tokens):.1f} passes) in "
            f"{figures['wall_s'] / 60:.2f} min",
            f"  val loss (last 10% of tinyshakespeare) {figures['val']:.3f}",
            *(f"  unseen {n}: loss {figures[n]:.3f}" for n in UNSEEN),
            f"  load before: {figures['load_before']}",
            f"  load after:  {figures['load_after']}",
        ]
        print("\n".join(lines[-7:]), flush=True)
    if {"recipe", "nanogpt"} <= set(results):
        ours, ref = results["recipe"], results["nanogpt"]
        lines.append("recipe - nanogpt (nats, negative = recipe better): val "
                     f"{ours['val'] - ref['val']:+.3f}; " +
                     "; ".join(f"{n} {ours[n] - ref[n]:+.3f}" for n in UNSEEN))
        lines.append(f"goals: val <= 4.5: {'met' if ours['val'] <= 4.5 else 'missed'}; unseen within 0.3 "
                     "of nanogpt: " + ", ".join(f"{n} {'met' if ours[n] - ref[n] <= 0.3 else 'missed'}"
                                                for n in UNSEEN))
        print("\n".join(lines[-2:]), flush=True)
    write_report("\n".join(lines), args.output)
    return 0
