"""Training throughput (tokens/s, MFU) vs llms_from_scratch and transformers; time-to-loss.

``throughput`` (default): for the ``small`` preset and for gpt2-small at context 256, the same
config, initial weights, batch and thread count in every candidate:

- ``gptsmith``: one optimizer step of ``gptsmith.trainer.Trainer`` exactly as ``gptsmith train``
  runs it (bf16 autocast where the CPU has native bf16, fused AdamW with decay on matrices only,
  gradient clipping, the resumable batch sampler);
- ``gptsmith-fp32``: the same loop forced to fp32 (shows what autocast buys);
- ``llms_from_scratch``: ``llms_from_scratch.ch04.GPTModel`` with the book's ch05 loop
  (``calc_loss_batch``, ``zero_grad``, ``backward``, default ``torch.optim.AdamW``), fp32;
- ``transformers``: ``GPT2LMHeadModel`` (SDPA attention), the same loop and optimizer, fp32.

MFU = achieved FLOP/s / this machine's fp32 matmul peak, measured here with a large matmul on
all threads. FLOPs per token = 6·N (N = parameters that take part in a matmul: every weight but
the position table; the tied head counts once) + 12·n_layers·emb_dim·context (attention scores
and weighted sum, forward + backward; PaLM's formula).

``time-to-loss``: trains the ``tinyshakespeare`` recipe for ``--minutes`` of wall time and reports
the validation loss reached.

    python -m benchmarks train --repeats 3                     # throughput
    python -m benchmarks train --repeats 3 --presets tiny --context-length 128 --batch-size 8 --drop-rate 0.2
    python -m benchmarks train --mode time-to-loss --minutes 10
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.harness import base_parser, compare, print_report, timed, write_report
from benchmarks.model_forward import candidates_for
from gptsmith.model.gpt import GPTConfig, GPTModel
from gptsmith.train.callbacks import TrainCallbacks
from gptsmith.train.config import TrainConfig
from gptsmith.train.trainer import Trainer


def matmul_peak_gflops(size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best-of-``repeats`` GFLOP/s of a (size x size) @ (size x size) matmul on all threads."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def flops_per_token(cfg: GPTConfig, context_length: int) -> float:
    """Training FLOPs per token: 6·N for the matmul weights + 12·L·d·T for attention."""
    d, vocab, layers = cfg.emb_dim, cfg.vocab_size, cfg.n_layers
    per_layer = 3 * d * d + d * d + 2 * 4 * d * d  # qkv, out_proj, feed-forward (weights only)
    n = layers * per_layer + vocab * d  # + the output head (tied to the token embedding)
    return 6 * n + 12 * layers * d * context_length


def gptsmith_step(cfg: GPTConfig, batch_size: int, dtype: str):
    torch.manual_seed(0)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, 64 * batch_size * cfg.context_length)
    tokens = tokens.astype(np.uint32)
    train_cfg = TrainConfig(batch_size=batch_size, max_steps=10**6, device="cpu", dtype=dtype, lr=1e-4)
    trainer = Trainer(GPTModel(cfg), train_cfg, tokens, tokens[: 4 * cfg.context_length])
    return lambda: trainer._train_step()


def reference_step(module, forward, inputs, targets):
    """The book's ch05 loop body (train_model_simple): loss, zero_grad, backward, step."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=0.1)
    module.train()

    def step():
        optimizer.zero_grad()
        logits = forward(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()

    return step


def throughput(preset: str, context_length: int, batch_size: int, steps: int, repeats: int, warmup: int,
               drop_rate: float = 0.0):
    cfg = GPTConfig.from_preset(preset, context_length=context_length, drop_rate=drop_rate)
    ids = torch.randint(0, cfg.vocab_size, (batch_size, context_length + 1))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    steps_fns = {"gptsmith": gptsmith_step(cfg, batch_size, "auto"),
                 "gptsmith-fp32": gptsmith_step(cfg, batch_size, "fp32")}
    for name, (module, forward) in candidates_for(cfg).items():
        if name != "gptsmith":
            steps_fns[name] = reference_step(module, forward, inputs, targets)
    n_tokens = batch_size * context_length

    def run(step):
        def one_repeat():
            seconds = timed(lambda: [step() for _ in range(steps)])
            return {"tokens/s": steps * n_tokens / seconds}

        return one_repeat

    return cfg, compare({name: run(fn) for name, fn in steps_fns.items()}, repeats=repeats, warmup=warmup)


def report_throughput(args) -> None:
    for preset in args.presets:
        peak_before = matmul_peak_gflops()
        cfg, results = throughput(preset, args.context_length, args.batch_size, args.steps, args.repeats,
                                  args.warmup, args.drop_rate)
        # The best of two measurements around the run: a busy moment of a shared machine lowers the
        # peak (and so inflates MFU), so keep the higher figure.
        peak = max(peak_before, matmul_peak_gflops())
        peak_bf16 = matmul_peak_gflops(dtype=torch.bfloat16)
        per_token = flops_per_token(cfg, args.context_length)
        for figures in results.values():
            figures["MFU % (fp32 peak)"] = [100 * t * per_token / (peak * 1e9) for t in figures["tokens/s"]]
        text = print_report(
            f"training step: {preset}, context {args.context_length}, batch {args.batch_size}, "
            f"dropout {args.drop_rate:g}, {args.steps} steps per repeat, {torch.get_num_threads()} threads",
            results,
            higher_is_better={"tokens/s": True, "MFU % (fp32 peak)": True},
            notes=[f"measured matmul peak: fp32 {peak:,.0f} GFLOP/s, bf16 {peak_bf16:,.0f} GFLOP/s "
                   f"(2048^2 matmul, all threads); {per_token / 1e6:,.1f} MFLOP per token",
                   "gptsmith = its Trainer step (bf16 autocast if the CPU has native bf16, fused AdamW, "
                   "clipping); references: ch05-style loop, fp32, default AdamW"],
        )
        write_report(text, args.output)


class StopAfter(TrainCallbacks):
    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds
        self.trainer = None

    def on_step(self, info):
        if time.perf_counter() > self.deadline:
            self.trainer.request_stop("time")


def time_to_loss(args) -> None:
    from gptsmith.data.tokenizer import get_tokenizer
    from gptsmith.train.recipes import get_recipe
    from gptsmith.train.run import prepare_splits

    recipe = get_recipe("tinyshakespeare")
    tokenizer = get_tokenizer("gpt2")
    train_tokens, val_tokens, _ = prepare_splits("tinyshakespeare", tokenizer)
    train_cfg = TrainConfig(**{**recipe["train"], "max_steps": args.max_steps, "eval_every": 0,
                               "sample_every": 0, "device": "cpu"})
    torch.manual_seed(train_cfg.seed)
    model = GPTModel(GPTConfig.from_preset(recipe["preset"], **recipe["model"]))
    callbacks = StopAfter(args.minutes * 60)
    trainer = Trainer(model, train_cfg, train_tokens, val_tokens, callbacks=callbacks)
    callbacks.trainer = trainer
    started = time.perf_counter()
    result = trainer.fit()
    minutes = (time.perf_counter() - started) / 60
    final = trainer._evaluate()  # the same fixed validation batches as the step-0 evaluation
    text = (f"== time-to-loss: tinyshakespeare recipe ({recipe['preset']} preset), CPU, "
            f"{torch.get_num_threads()} threads ==\n"
            f"  {result.step} steps, {result.tokens_seen:,} tokens in {minutes:.1f} min "
            f"(limit {args.minutes} min, schedule of {args.max_steps} steps)\n"
            f"  val loss {result.evals[0]['val_loss']:.3f} -> {final['val_loss']:.3f} "
            f"(train {final['train_loss']:.3f})")
    print(text, flush=True)
    write_report(text, args.output)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], __name__)
    parser.add_argument("--mode", choices=["throughput", "time-to-loss"], default="throughput")
    parser.add_argument("--presets", nargs="+", default=["small", "gpt2-small"])
    parser.add_argument("--context-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="training steps per repeat (default 2)")
    parser.add_argument("--drop-rate", type=float, default=0.0,
                        help="throughput: dropout of every candidate (default 0; gptsmith draws its CPU "
                             "mask faster, model/dropout.py)")
    parser.add_argument("--minutes", type=float, default=10.0, help="time-to-loss: wall-clock budget")
    parser.add_argument("--max-steps", type=int, default=1500,
                        help="time-to-loss: length of the LR schedule (set it to what fits in --minutes)")
    args = parser.parse_args(argv)
    if args.mode == "throughput":
        report_throughput(args)
    else:
        time_to_loss(args)
    return 0
