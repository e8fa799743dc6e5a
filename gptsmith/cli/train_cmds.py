"""Sub-command ``gptsmith train``: pretraining and exact resume (``gptsmith eval`` is in eval_cmds)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptsmith.cli.shell import command_line
from gptsmith.cli.train_configs import (
    build_configs,
    check_vocab_size,
    file_values_named,
    read_run_info,
    resume_configs,
    resume_corpus,
)
from gptsmith.cli.train_progress import ProgressPrinter, plural, say
from gptsmith.device import DEVICE_HELP, TRAIN_DTYPES, device_arg, dtype_arg
from gptsmith.errors import ConfigError

TRAIN_EPILOG = """\
examples:
  gptsmith train                    # the main job: tiny preset, built-in corpus, minutes on a CPU
  gptsmith train --recipe tinyshakespeare --out runs/shakespeare
  gptsmith train --data notes/ --time-budget 20m --out runs/n20   # the schedule sized to end in 20 minutes
  gptsmith train --data notes/ --preset small --context-length 256 --lr 1e-3 --out runs/notes
  gptsmith train --resume runs/notes --max-steps 2000     # continue exactly where it stopped
  torchrun --standalone --nproc_per_node=2 -m gptsmith train --out runs/ddp   # data-parallel processes

On --resume only --max-steps, --device, --eval-every, --checkpoint-every, --sample-every,
--keep-last, --lr, --min-lr and --grad-clip may change (the last three apply from the resumed
step on, the schedule rebuilt with them: no longer an exact continuation); everything else is
read from RUN_DIR/run.json, and other flags must ask for the run's own values (--data may name where
a corpus that has moved is now: its tokens are checked). Ctrl-C or SIGTERM stops
after the current step with a checkpoint (exit status 130); a second Ctrl-C aborts at once, dropping
a checkpoint half written. A new best validation loss is always checkpointed; RUN_DIR/best names it.
"""


def _train_defaults() -> dict[str, Any]:
    """What a flag defaults to: the default recipe's value, else TrainConfig's field default."""
    import dataclasses

    from gptsmith.train.config import TrainConfig
    from gptsmith.train.recipes import get_recipe

    recipe = get_recipe("default")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {**defaults, **recipe["train"], "preset": recipe["preset"]}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``eval`` to ``subparsers``."""
    from gptsmith.train.config import OPTIMIZERS

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
    p.add_argument("--out", help="run directory: a new or empty folder, or a run to --overwrite "
                   "(default: runs/<date-time>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out, once every other flag checks out; deletes only its run "
                   "files (run.json, checkpoints/, latest, best, metrics.jsonl, loss.png, samples.txt). "
                   "A non-empty folder that is not a run is always refused")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly from its latest checkpoint")
    p.add_argument("--fallback", action="store_true",
                   help="with --resume: if the latest checkpoint is corrupt, use the newest good one")
    p.add_argument("--max-steps", type=int, help=f"optimizer steps (default: {d['max_steps']})")
    p.add_argument("--time-budget", metavar="DURATION",
                   help="train for this long instead of --max-steps (e.g. 90s, 10m, 1.5h, 1h30m): the first "
                   "steps are timed and the schedule (warm-up, cosine decay) sized to end, evaluations and "
                   "checkpoints included, within it; run.json records the steps chosen")
    p.add_argument("--batch-size", type=int,
                   help=f"sequences per micro-batch, per process (default: {d['batch_size']})")
    p.add_argument("--context-length", type=int,
                   help="tokens per sequence (sets the model's context; default: the preset's)")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default: {d['lr']})")
    p.add_argument("--min-lr", type=float, help="floor of the cosine decay (default: lr/10)")
    p.add_argument("--warmup-steps", type=int, help=f"linear warm-up steps (default: {d['warmup_steps']})")
    p.add_argument("--weight-decay", type=float,
                   help=f"weight decay on weight matrices (default: {d['weight_decay']})")
    p.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="adamw, or muon: Muon for the transformer's matrices and AdamW for embeddings, "
                   "head, biases and norms (PyTorch >= 2.9; lower loss in the same steps on small "
                   f"models; default: {d['optimizer']}, or the recipe's)")
    p.add_argument("--muon-ns-steps", type=int,
                   help="with --optimizer muon: Newton-Schulz iterations per update; fewer are faster and "
                   f"orthogonalise less exactly (default: {d['muon_ns_steps']}, or the recipe's)")
    p.add_argument("--label-smoothing", type=float,
                   help="share of each target's probability spread over the whole vocabulary in the "
                   f"training loss; keeps unseen tokens possible (default: {d['label_smoothing']})")
    p.add_argument("--trim-vocab", action=argparse.BooleanOptionalAction, default=None,
                   help="compute the head only for the tokens the training split uses; the others share "
                   "one row (up to ~2x faster steps on a small corpus; from scratch only; default: "
                   f"{d['trim_vocab']}, or the recipe's)")
    p.add_argument("--grad-clip", type=float, help=f"max gradient norm, 0 = off (default: {d['grad_clip']})")
    p.add_argument("--target-batch-tokens", type=int,
                   help="accumulate gradients until a step sees this many tokens (default: no accumulation)")
    p.add_argument("--eval-every", type=int,
                   help=f"steps between evaluations, 0 = only at the end (default: {d['eval_every']})")
    p.add_argument("--eval-batches", type=int,
                   help=f"batches per split per evaluation (default: {d['eval_batches']})")
    p.add_argument("--checkpoint-every", type=int,
                   help="steps between checkpoints; 0 = only at the end (default: at every evaluation)")
    p.add_argument("--keep-last", type=int,
                   help=f"checkpoints kept besides the best one (default: {d['keep_last']})")
    p.add_argument("--sample-every", type=int,
                   help="steps between samples (default: at every evaluation; 0 = never)")
    p.add_argument("--prompt", help=f"prompt of the periodic sample (default: {d['sample_prompt']!r} on the "
                   "recipe's own corpus; on any other corpus the sample is unprompted)")
    p.add_argument("--text-field", help="the field (.jsonl) or column (.parquet) holding the text "
                   f"(default: {d['text_field']})")
    p.add_argument("--tokenizer", help="gpt2 (default) or simple (word-level, learnt from the corpus)")
    p.add_argument("--val-fraction", type=float,
                   help=f"last part of the corpus held out for validation (default: {d['val_fraction']})")
    p.add_argument("--seed", type=int, help=f"seed of weights, data order and dropout (default: {d['seed']})")
    p.add_argument("--device", type=device_arg, help=f"where to train: {DEVICE_HELP}")
    p.add_argument("--dtype", type=dtype_arg(TRAIN_DTYPES), metavar="{auto,bf16,fp32}",
                   help="auto = bf16 autocast where faster (bfloat16 and float32 work too)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.set_defaults(func=run_train)


# --- train ----------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """What ``gptsmith train`` settles before it builds anything: where, what, and from where."""

    run_dir: Path
    model_cfg: Any
    train_cfg: Any
    tokenizer: Any
    found: tuple | None = None  # the checkpoint to resume (find_resume_checkpoint's answer)
    run_info: dict = field(default_factory=dict)  # the resumed run's run.json
    notes: list[str] = field(default_factory=list)  # printed once resumed


def run_train(args: argparse.Namespace) -> int:
    """``gptsmith train``: check every argument, then (and only then) replace an old run and train."""
    from gptsmith.device import set_seed
    from gptsmith.model.gpt import GPTModel
    from gptsmith.train.run_dir import clear_run_dir
    from gptsmith.train.trainer import Trainer

    _check_path_flags(args)
    with file_values_named(args):  # a value from --config that cannot work is blamed on the file
        plan = _plan_resume(args) if args.resume else _plan_new_run(args)
        if plan is None:
            return 0
        _check_memory(plan)  # in a second, before the corpus is tokenized or the model built
    run_dir, train_cfg = plan.run_dir, plan.train_cfg
    data = resume_corpus(plan.run_info, train_cfg, run_dir) if plan.found is not None else train_cfg.data
    train_tokens, val_tokens, data_info = _prepare_data(train_cfg, plan.tokenizer, data)
    if plan.run_info.get("data_info", {}).get("checksum") not in (None, data_info["checksum"]):
        raise ConfigError(f"the corpus {train_cfg.data!r} changed since {run_dir} started (its token "
                          "checksum differs); resume needs the same data, or start a new run")

    set_seed(train_cfg.seed)  # the initial weights' seed (the Trainer seeds dropout and the rest itself)
    model = GPTModel(plan.model_cfg)
    progress = ProgressPrinter(show_bar=not args.no_progress)
    # The Trainer checks the device, the batch against the data and the context: the last checks.
    trainer = Trainer(model, train_cfg, train_tokens, val_tokens, run_dir=run_dir, tokenizer=plan.tokenizer,
                      callbacks=progress, run_info={"data_info": data_info}, overwrite=args.overwrite)
    if plan.found is not None:
        for problem in trainer.resume(found=plan.found):
            say(f"skipped a bad checkpoint: {problem}")
        say(f"resuming {run_dir} from step {trainer.step} ({trainer.last_checkpoint})")
        for note in plan.notes:
            say(note)
    elif args.overwrite and trainer.dist.is_main and clear_run_dir(run_dir):
        say(f"--overwrite: deleted the old run's files in {run_dir}")
    if plan.found is None:
        for note in plan.notes:
            say(note)
    target = train_cfg.target_batch_tokens
    if target and target != trainer.tokens_per_step:  # steps are whole micro-batches
        say(f"note: --target-batch-tokens {target:,} gives steps of {trainer.tokens_per_step:,} tokens: "
            f"{trainer.accum_steps} micro-batch(es) of --batch-size x context x processes "
            f"(change --batch-size for steps closer to it)")
    if train_cfg.warmup_steps >= train_cfg.max_steps and train_cfg.time_budget is None:
        say(f"note: --warmup-steps {train_cfg.warmup_steps} >= --max-steps {train_cfg.max_steps}: the "
            f"learning rate never reaches its peak {train_cfg.lr:g} (lower --warmup-steps)")
    n_train, n_val = data_info["n_train_tokens"], data_info["n_val_tokens"]
    say(f"corpus: {n_train:,} train + {n_val:,} val tokens")
    val_share = n_val / max(1, n_train + n_val)
    if abs(val_share - train_cfg.val_fraction) > train_cfg.val_fraction / 2:  # cut between whole documents
        say(f"note: validation is {100 * val_share:.0f}% of the tokens, not the --val-fraction "
            f"{100 * train_cfg.val_fraction:g}%: a corpus of several documents is split between them "
            "(more, smaller files give a closer split)")
    result = _fit(trainer, progress, run_dir)
    return _report(result, run_dir, train_cfg) if trainer.dist.is_main else 0


def _plan_resume(args: argparse.Namespace) -> _Plan | None:
    """The plan for ``--resume RUN_DIR``; None (after a line saying so) when it has nothing to do."""
    from gptsmith.data.tokenizer import load_tokenizer
    from gptsmith.train.checkpointing import find_resume_checkpoint

    run_dir = Path(args.resume)
    run_info = read_run_info(run_dir)
    model_cfg, train_cfg, notes = resume_configs(args, run_dir, run_info)
    # Found first: its step may leave nothing to do, and a word-level vocabulary is saved with it.
    found = find_resume_checkpoint(run_dir, fallback=args.fallback)
    if found[0].get("note"):
        notes = [found[0]["note"], *notes]
    step = int(found[0]["state"]["step"])
    if step >= train_cfg.max_steps:  # before anything is written: run.json keeps its --max-steps
        say(f"nothing to do: {run_dir} is already at step {step} >= --max-steps {train_cfg.max_steps} "
            "(pass a larger --max-steps to train it further)")
        return None
    tokenizer = load_tokenizer(train_cfg.tokenizer, found[0]["path"])
    return _Plan(run_dir, model_cfg, train_cfg, tokenizer, found=found, run_info=run_info, notes=notes)


def _plan_new_run(args: argparse.Namespace) -> _Plan:
    """The plan for a new run: its configs, an --out it may use (nothing deleted yet), its tokenizer."""
    import dataclasses

    from gptsmith.data.corpus import resolve_corpus
    from gptsmith.data.shards import corpus_tokenizer
    from gptsmith.train.run_dir import check_new_run_dir

    model_cfg, train_cfg = build_configs(args)
    run_dir = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    check_new_run_dir(run_dir, overwrite=args.overwrite)
    with file_values_named(args, about="data"):  # (a corpus path in the file is read from here, not there)
        corpus = resolve_corpus(train_cfg.data, text_field=train_cfg.text_field)
    tokenizer = corpus_tokenizer(train_cfg.tokenizer, corpus)
    check_vocab_size(args.config, tokenizer.name, tokenizer.vocab_size)
    # One embedding per token id the tokenizer makes: a preset's 50,257 yields to a word-level vocabulary.
    model_cfg = dataclasses.replace(model_cfg, vocab_size=tokenizer.vocab_size)
    return _Plan(run_dir, model_cfg, train_cfg, tokenizer)


def _check_memory(plan: _Plan) -> None:
    """Refuse a run whose training step cannot fit in memory (the Trainer checks again, for callers
    of the library; here it comes before the slow parts)."""
    from gptsmith.device import resolve_device
    from gptsmith.model.memory import check_train_memory

    cfg = plan.train_cfg
    check_train_memory(plan.model_cfg, cfg.batch_size, cfg.context_length or plan.model_cfg.context_length,
                       resolve_device(cfg.device))


def _report(result: Any, run_dir: Path, train_cfg: Any) -> int:
    """The closing lines of a run, and its exit status (130 after a stop signal)."""
    if result.stopped == "interrupted":
        say(f"stopped at step {result.step} after a stop signal; checkpoint {result.last_checkpoint}")
        say(f"continue with: {command_line('gptsmith', 'train', '--resume', run_dir)}")
        return 130
    best = f", best val loss {result.best_val_loss:.3f}" if result.best_val_loss is not None else ""
    say(f"done: {plural(result.step, 'step')}, {plural(result.tokens_seen, 'token')}{best}; run directory "
        f"{run_dir}")
    prompt = train_cfg.sample_prompt or "Your prompt"
    say(f"generate with: {command_line('gptsmith', 'generate', '--checkpoint', run_dir, prompt)}")
    return 0


def _check_path_flags(args: argparse.Namespace) -> None:
    """Refuse flags that name no run: an empty --out or --resume (Path("") is the current folder);
    and a --prompt that is not UTF-8."""
    from gptsmith.cli.stdin_text import check_utf8_arg

    check_utf8_arg("--prompt", args.prompt)
    if args.fallback and not args.resume:
        raise ConfigError("--fallback only applies with --resume RUN_DIR (it picks the checkpoint to resume)")
    for flag_name, value in (("--out", args.out), ("--resume", args.resume)):
        if value is not None and not value.strip():
            raise ConfigError(f"{flag_name} is empty (pass a run directory, e.g. runs/notes)")


def _prepare_data(train_cfg: Any, tokenizer: Any, data: str) -> tuple[Any, Any, dict]:
    """The (train, val, info) splits of the run's corpus, read from ``data`` (``train_cfg.data``, or
    where a resumed run found it), saying whether it is tokenized now or cached. ``info`` records
    the corpus's ``location``, so that the run resumes from any directory."""
    from gptsmith.data.corpus import corpus_location
    from gptsmith.train.run import prepare_splits

    tokenizing = []

    def on_progress(done: int, total: int | None) -> None:  # called only while tokenizing
        if not tokenizing:
            tokenizing.append(True)
            say(f"data: {data} (tokenizing with {tokenizer.name}; cached for the next runs)")

    train_tokens, val_tokens, info = prepare_splits(data, tokenizer, train_cfg.val_fraction,
                                                    progress=on_progress, text_field=train_cfg.text_field)
    if not tokenizing:
        say(f"data: {data} (cached tokens)")
    return train_tokens, val_tokens, {**info, "location": corpus_location(data)}


def _fit(trainer: Any, progress: ProgressPrinter, run_dir: Path) -> Any:
    """``trainer.fit()``; a second Ctrl-C aborts it at once, after a line on what the run still has."""
    from gptsmith.train.distributed import shutdown
    from gptsmith.train.run_dir import resume_advice

    try:
        return trainer.fit()
    except KeyboardInterrupt:
        progress.close()
        if trainer.dist.is_main:  # the CLI then prints "interrupted" and exits with status 130
            print(f"gptsmith train: {resume_advice(run_dir)}", file=sys.stderr)
        raise
    finally:
        progress.close()
        shutdown(trainer.dist)


# --- eval -----------------------------------------------------------------------------------------
