"""Sub-commands: ``gptsmith train`` (pretraining, resume) and ``gptsmith eval`` (loss and perplexity)."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from gptsmith.cli.train_configs import build_configs, read_run_info, resume_configs
from gptsmith.errors import ConfigError

TRAIN_EPILOG = """\
examples:
  gptsmith train                    # the main job: tiny preset, built-in corpus, minutes on a CPU
  gptsmith train --recipe tinyshakespeare --out runs/shakespeare
  gptsmith train --data notes/ --preset small --context-length 256 --lr 1e-3 --out runs/notes
  gptsmith train --resume runs/notes --max-steps 2000     # continue exactly where it stopped
  torchrun --standalone --nproc_per_node=2 -m gptsmith train --out runs/ddp   # data-parallel processes

On --resume only --max-steps, --device, --eval-every, --checkpoint-every, --sample-every,
--keep-last, --lr, --min-lr and --grad-clip may change (the last three apply from the resumed
step on, the schedule rebuilt with them: no longer an exact continuation); everything else is
read from RUN_DIR/run.json, and other flags must ask for the run's own values. Ctrl-C or SIGTERM stops
after the current step with a checkpoint (exit status 130). A new best validation loss is always
checkpointed; RUN_DIR/best names it.
"""


def _train_defaults() -> dict[str, Any]:
    """What a flag defaults to: the default recipe's value, else TrainConfig's field default."""
    import dataclasses

    from gptsmith.recipes import get_recipe
    from gptsmith.train import TrainConfig

    recipe = get_recipe("default")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {**defaults, **recipe["train"], "preset": recipe["preset"]}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``eval`` to ``subparsers``."""
    d = _train_defaults()
    p = subparsers.add_parser(
        "train", help="pretrain a GPT on a corpus (or --resume a run)",
        description="Train a GPT from scratch. With no arguments: the tiny preset on the built-in corpus "
        "for a few minutes on a CPU. Precedence: --recipe < --config file < flags. Defaults below are "
        "the default recipe's.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", help="corpus name or path (builtin, the-verdict, tinyshakespeare, a file, dir, "
                   f"glob, .jsonl, .parquet, hf:NAME); default: {d['data']}")
    p.add_argument("--preset", help=f"model preset (tiny, small, gpt2-small, ...); default: {d['preset']}")
    p.add_argument("--recipe", help="ready-made settings: default, the-verdict, tinyshakespeare, "
                   "shakespeare_complete")
    p.add_argument("--config", help="YAML/JSON file with `model:` (GPTConfig fields, or preset:) and "
                   "`train:` (TrainConfig fields) sections")
    p.add_argument("--out", help="run directory (default: runs/<date-time>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly from its latest checkpoint")
    p.add_argument("--fallback", action="store_true",
                   help="with --resume: if the latest checkpoint is corrupt, use the newest good one")
    p.add_argument("--max-steps", type=int, help=f"optimizer steps (default: {d['max_steps']})")
    p.add_argument("--batch-size", type=int,
                   help=f"sequences per micro-batch, per process (default: {d['batch_size']})")
    p.add_argument("--context-length", type=int,
                   help="tokens per sequence (sets the model's context; default: the preset's)")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default: {d['lr']})")
    p.add_argument("--min-lr", type=float, help="floor of the cosine decay (default: lr/10)")
    p.add_argument("--warmup-steps", type=int, help=f"linear warm-up steps (default: {d['warmup_steps']})")
    p.add_argument("--weight-decay", type=float,
                   help=f"AdamW weight decay on weight matrices (default: {d['weight_decay']})")
    p.add_argument("--grad-clip", type=float, help=f"max gradient norm, 0 = off (default: {d['grad_clip']})")
    p.add_argument("--target-batch-tokens", type=int,
                   help="accumulate gradients until a step sees this many tokens (default: no accumulation)")
    p.add_argument("--eval-every", type=int,
                   help=f"steps between evaluations, 0 = only at the end (default: {d['eval_every']})")
    p.add_argument("--eval-batches", type=int,
                   help=f"batches per split per evaluation (default: {d['eval_batches']})")
    p.add_argument("--checkpoint-every", type=int,
                   help="steps between checkpoints (default: at every evaluation)")
    p.add_argument("--keep-last", type=int,
                   help=f"checkpoints kept besides the best one (default: {d['keep_last']})")
    p.add_argument("--sample-every", type=int,
                   help="steps between samples (default: at every evaluation; 0 = never)")
    p.add_argument("--prompt", help=f"prompt of the periodic sample (default: {d['sample_prompt']!r})")
    p.add_argument("--tokenizer", help="gpt2 (default) or simple (word-level, learnt from the corpus)")
    p.add_argument("--val-fraction", type=float,
                   help=f"last part of the corpus held out for validation (default: {d['val_fraction']})")
    p.add_argument("--seed", type=int, help=f"seed of weights, data order and dropout (default: {d['seed']})")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], help="auto = bf16 autocast where faster")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser("eval", help="loss and perplexity per split of a checkpoint")
    source = e.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="model or run directory")
    source.add_argument("--preset", help="score an untrained model of this preset (about ln(vocab_size))")
    e.add_argument("--data", help="corpus (default: the run's training data, else builtin)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--context-length", type=int, help="default: the model's (capped at 256 for --preset)")
    e.add_argument("--max-batches", type=int, default=50, help="batches per split (default 50)")
    e.add_argument("--val-fraction", type=float, help="default: the run's, else 0.1")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    e.add_argument("--seed", type=int, default=123)
    e.set_defaults(func=run_eval)


# --- train ----------------------------------------------------------------------------------------


def run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from gptsmith.device import set_seed
    from gptsmith.model import GPTModel
    from gptsmith.shards import corpus_tokenizer
    from gptsmith.tokenizer import load_tokenizer
    from gptsmith.train import prepare_splits
    from gptsmith.trainer import Trainer
    from gptsmith.weights import resolve_model_dir

    if args.fallback and not args.resume:
        raise ConfigError("--fallback only applies with --resume RUN_DIR (it picks the checkpoint to resume)")
    if args.resume:
        run_dir = Path(args.resume)
        run_info = read_run_info(run_dir)
        model_cfg, train_cfg, notes = resume_configs(args, run_dir, run_info)
    else:
        model_cfg, train_cfg = build_configs(args)
        run_dir = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        if _rank() == 0:  # under torchrun, one process decides (the others would race with it)
            _claim_run_dir(run_dir, overwrite=args.overwrite)

    if args.resume:  # the vocabulary the run started with (a word-level one is saved with each checkpoint)
        tokenizer = load_tokenizer(train_cfg.tokenizer, resolve_model_dir(run_dir))
    else:
        tokenizer = corpus_tokenizer(train_cfg.tokenizer, train_cfg.data)
    if not args.resume and model_cfg.vocab_size != tokenizer.vocab_size:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=tokenizer.vocab_size)
    _say(f"data: {train_cfg.data} (tokenizing once, then cached)")
    train_tokens, val_tokens, data_info = prepare_splits(train_cfg.data, tokenizer, train_cfg.val_fraction)
    if args.resume and run_info.get("data_info", {}).get("checksum") not in (None, data_info["checksum"]):
        raise ConfigError(f"the corpus {train_cfg.data!r} changed since {run_dir} started (its token "
                          "checksum differs); resume needs the same data, or start a new run")

    set_seed(train_cfg.seed)  # the initial weights' seed (the Trainer seeds dropout and the rest itself)
    model = GPTModel(model_cfg)
    progress = ProgressPrinter(show_bar=not args.no_progress)
    trainer = Trainer(model, train_cfg, train_tokens, val_tokens, run_dir=run_dir, tokenizer=tokenizer,
                      callbacks=progress, run_info={"data_info": data_info})
    if args.resume:
        for problem in trainer.resume(fallback=args.fallback):
            _say(f"skipped a bad checkpoint (renamed corrupt-step-N): {problem}")
        _say(f"resuming {run_dir} from step {trainer.step} ({trainer.last_checkpoint})")
        for note in notes:
            _say(note)
        if trainer.step >= train_cfg.max_steps:
            _say(f"note: the run is already at step {trainer.step}, not below --max-steps "
                 f"{train_cfg.max_steps}: nothing to train (pass a larger --max-steps to continue)")
    if train_cfg.warmup_steps >= train_cfg.max_steps:
        _say(f"note: --warmup-steps {train_cfg.warmup_steps} >= --max-steps {train_cfg.max_steps}: the "
             f"learning rate never reaches its peak {train_cfg.lr:g} (lower --warmup-steps)")
    _say(f"corpus: {data_info['n_train_tokens']:,} train + {data_info['n_val_tokens']:,} val tokens")
    try:
        result = trainer.fit()
    finally:
        progress.close()
        from gptsmith.distributed import shutdown

        shutdown(trainer.dist)
    if not trainer.dist.is_main:
        return 0
    if result.stopped == "interrupted":
        _say(f"stopped at step {result.step} after a stop signal; checkpoint {result.last_checkpoint}")
        _say(f"continue with: gptsmith train --resume {run_dir}")
        return 130
    best = f", best val loss {result.best_val_loss:.3f}" if result.best_val_loss is not None else ""
    _say(f"done: {result.step} steps, {result.tokens_seen:,} tokens{best}; run directory {run_dir}")
    prompt = train_cfg.sample_prompt or "Your prompt"
    _say(f"generate with: gptsmith generate --checkpoint {run_dir} \"{prompt}\"")
    return 0


def _claim_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse to mix a new run into an old one unless --overwrite."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file (pass a directory)")
    if (run_dir / "run.json").exists() or (run_dir / "checkpoints").exists():
        if not overwrite:
            raise ConfigError(f"{run_dir} already holds a run (continue it with --resume {run_dir}, "
                              "replace it with --overwrite, or choose another --out)")
        for name in ("checkpoints", "run.json", "latest", "best", "metrics.jsonl", "loss.png", "samples.txt"):
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _rank() -> int:
    """This process's rank under torchrun (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


def _say(message: str) -> None:
    """Print one line above the progress bar (rank 0 only)."""
    from tqdm import tqdm

    if _rank() == 0:
        tqdm.write(message, file=sys.stdout)


class ProgressPrinter:
    """Draws the progress bar (step, loss, lr, tokens seen, tokens/s) and prints evals and samples."""

    # Implements every hook of gptsmith.trainer.TrainCallbacks (not imported here: keeps `--help` fast).

    def __init__(self, show_bar: bool = True) -> None:
        self.show_bar = show_bar
        self.bar = None

    def on_start(self, info: dict) -> None:
        from tqdm import tqdm

        _say(f"model: {info['parameters'] / 1e6:.1f}M parameters on {info['device']} ({info['dtype']}, "
             f"{info['world_size']} process(es)); {info['tokens_per_step']:,} tokens per step "
             f"({info['accum_steps']} micro-batch(es))")
        if self.show_bar:
            self.bar = tqdm(total=info["max_steps"], initial=info["start_step"], unit="step", file=sys.stdout,
                            dynamic_ncols=True, leave=True)

    def on_step(self, info: dict) -> None:
        if self.bar is not None:
            # The numbers first, then the step, so the bar redraws with this step's numbers.
            self.bar.set_postfix_str(f"loss {info['loss']:.3f} lr {info['lr']:.2e} "
                                     f"tokens {info['tokens_seen']:,} {info['tokens_per_s']:,.0f} tok/s",
                                     refresh=False)
            self.bar.update(1)

    def on_eval(self, info: dict) -> None:
        ppl = f"{info['val_ppl']:,.1f}" if math.isfinite(info["val_ppl"]) else "inf"
        _say(f"step {info['step']:>5} | train loss {info['train_loss']:.3f} | "
             f"val loss {info['val_loss']:.3f} (ppl {ppl}) | tokens seen {info['tokens_seen']:,}")

    def on_sample(self, step: int, text: str) -> None:
        _say(f"sample: {text!r}")

    def on_checkpoint(self, step: int, path: Path) -> None:
        pass

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --- eval -----------------------------------------------------------------------------------------


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from gptsmith.batches import FixedBatches
    from gptsmith.data import count_windows
    from gptsmith.device import resolve_device, set_seed, tune_cpu_allocator
    from gptsmith.errors import DataError
    from gptsmith.model import GPTConfig, GPTModel
    from gptsmith.tokenizer import load_tokenizer
    from gptsmith.train import calc_loss_loader, perplexity, prepare_splits
    from gptsmith.weights import load_model, read_model_config, resolve_model_dir

    for flag_name, value in (("--batch-size", args.batch_size), ("--max-batches", args.max_batches),
                             ("--context-length", args.context_length)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag_name} must be >= 1, got {value}")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    device = resolve_device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()  # the logits of every batch are big buffers: avoid re-faulting them
    run_train_cfg: dict = {}
    if args.checkpoint:
        model_dir = resolve_model_dir(args.checkpoint)
        tokenizer = load_tokenizer(read_model_config(model_dir).get("tokenizer", "gpt2"), model_dir)
        for candidate in (Path(args.checkpoint), model_dir.parent.parent):
            if (candidate / "run.json").is_file():
                run_train_cfg = read_run_info(candidate).get("train", {})
                break
        model = load_model(model_dir, device=device)
        label = str(model_dir)
    else:
        set_seed(args.seed)
        cfg = GPTConfig.from_preset(args.preset)
        cfg = GPTConfig.from_preset(args.preset, context_length=min(cfg.context_length, 256))
        tokenizer, model = load_tokenizer("gpt2"), GPTModel(cfg).to(device).eval()
        label = f"untrained {args.preset}"
    data = args.data or run_train_cfg.get("data", "builtin")
    val_fraction = args.val_fraction
    if val_fraction is None:
        val_fraction = run_train_cfg.get("val_fraction", 0.1)
    train_tokens, val_tokens, _ = prepare_splits(data, tokenizer, val_fraction)
    context_length = args.context_length or model.cfg.context_length
    if context_length > model.cfg.context_length:
        raise ConfigError(f"--context-length {context_length} exceeds the model's {model.cfg.context_length}")
    print(f"model: {label} ({model.num_parameters() / 1e6:.1f}M parameters); data: {data}")
    for split, tokens in (("train", train_tokens), ("val", val_tokens)):
        n_windows = count_windows(len(tokens), context_length, context_length)
        if n_windows == 0:
            raise DataError(f"the {split} split of {data} has {len(tokens)} tokens, fewer than one window of "
                            f"{context_length} + 1 (lower --context-length)")
        batches = FixedBatches(tokens, context_length, min(args.batch_size, n_windows), args.max_batches)
        with torch.no_grad():
            loss = calc_loss_loader(batches, model, device)
        print(f"{split:>5}: loss {loss:.4f}  perplexity {perplexity(loss):,.2f}  "
              f"({len(batches)} batches of {batches.batch_size}x{context_length} tokens)")
    print(f"(an untrained model scores about ln(vocab_size) = ln({model.cfg.vocab_size}) = "
          f"{math.log(model.cfg.vocab_size):.2f})")
    return 0
