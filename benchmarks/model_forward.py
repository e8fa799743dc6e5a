"""GPT-2 forward (prefill) and training-step tokens/s vs llms_from_scratch and transformers, CPU fp32.

Two measurements, each with the same config and the same weights in every candidate (copied
from the gptsmith model, and checked to give the same logits before anything is timed):

- prefill: gpt2-small, one 1024-token sequence, full logits, ``torch.inference_mode``, eval mode;
- train step: the ``small`` preset (6 x 384, context 256), batch of 4 x 256 tokens, forward +
  cross-entropy + backward + AdamW step (the same settings for every candidate; gptsmith with its
  own fused AdamW as ``gptsmith train`` runs it, and again with the references' default AdamW).

transformers runs with ``attn_implementation="sdpa"`` (its default) so both use PyTorch's fused
attention; llms_from_scratch's GPTModel computes attention with plain matmuls and a mask.

    python -m benchmarks model_forward --repeats 5
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from benchmarks.harness import base_parser, compare, optional_import, print_report, timed, write_report
from gptsmith.device import tune_cpu_allocator
from gptsmith.model.fast_linear import FastLinear
from gptsmith.model.gpt import GPTConfig, GPTModel
from gptsmith.model.hf_gpt2 import hf_config_from_gpt, state_dict_to_hf
from gptsmith.train.schedule import build_optimizer


def lfs_config(cfg: GPTConfig) -> dict:
    """The config dict llms_from_scratch's GPTModel takes."""
    return {
        "vocab_size": cfg.vocab_size,
        "context_length": cfg.context_length,
        "emb_dim": cfg.emb_dim,
        "n_heads": cfg.n_heads,
        "n_layers": cfg.n_layers,
        "drop_rate": cfg.drop_rate,
        "qkv_bias": cfg.qkv_bias,
    }


@torch.no_grad()
def make_lfs(model: GPTModel):
    """llms_from_scratch.ch04.GPTModel with ``model``'s weights (head tied like ours)."""
    lfs = optional_import("llms_from_scratch.ch04")
    if lfs is None:
        return None
    other = lfs.GPTModel(lfs_config(model.cfg))
    state = model.state_dict()
    mapped = {}
    for name, tensor in state.items():
        if ".att.qkv." in name:  # fused [q | k | v] -> three matrices
            for part, chunk in zip(("W_query", "W_key", "W_value"), tensor.chunk(3, dim=0), strict=True):
                mapped[name.replace("qkv", part)] = chunk
        else:
            mapped[name] = tensor
    missing, unexpected = other.load_state_dict(mapped, strict=False)
    assert not unexpected and all(k.endswith("att.mask") for k in missing), (missing, unexpected)
    other.out_head.weight = other.tok_emb.weight
    return other


@torch.no_grad()
def make_hf(model: GPTModel, attn_implementation: str = "sdpa"):
    """transformers' GPT2LMHeadModel (SDPA attention unless told) with ``model``'s weights."""
    transformers = optional_import("transformers")
    if transformers is None:
        return None
    config = transformers.GPT2Config(**hf_config_from_gpt(model.cfg), attn_implementation=attn_implementation)
    other = transformers.GPT2LMHeadModel(config)
    missing, unexpected = other.load_state_dict(state_dict_to_hf(model), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    other.tie_weights()
    assert other.lm_head.weight.data_ptr() == other.transformer.wte.weight.data_ptr()
    assert other.config._attn_implementation == attn_implementation
    return other


def plain_linear(model: GPTModel) -> GPTModel:
    """A copy of ``model`` whose ``FastLinear`` layers are plain ``nn.Linear`` (PyTorch's own kernels)."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, FastLinear):
            module.__class__ = torch.nn.Linear
    return plain


def logits_fn(name: str, model):
    if name == "transformers":
        return lambda ids: model(ids, use_cache=False).logits
    return model


def candidates_for(cfg: GPTConfig) -> dict[str, tuple[torch.nn.Module, object]]:
    """{name: (module, ids -> logits)} for every installed implementation, same weights."""
    torch.manual_seed(0)
    ours = GPTModel(cfg)
    models = {"gptsmith": ours, "llms_from_scratch": make_lfs(ours), "transformers": make_hf(ours)}
    return {name: (m, logits_fn(name, m)) for name, m in models.items() if m is not None}


def check_same_logits(candidates, ids: torch.Tensor) -> None:
    with torch.inference_mode():
        reference = None
        for name, (module, forward) in candidates.items():
            module.eval()
            logits = forward(ids)
            if reference is None:
                reference = logits
            elif not torch.allclose(logits, reference, atol=1e-4, rtol=1e-4):
                raise RuntimeError(f"{name} logits differ by {(logits - reference).abs().max():.2e}")


def prefill_benchmark(repeats: int, warmup: int, n_tokens: int) -> dict:
    cfg = GPTConfig.from_preset("gpt2-small", context_length=max(1024, n_tokens))
    candidates = candidates_for(cfg)
    plain = plain_linear(candidates["gptsmith"][0])  # nn.Linear layers: the head not padded
    candidates["gptsmith plain"] = (plain, plain)
    ids = torch.randint(0, cfg.vocab_size, (1, n_tokens))
    check_same_logits(candidates, ids[:, :64])

    def run(forward):
        def one_repeat():
            with torch.inference_mode():
                seconds = timed(lambda: forward(ids))
            return {"tokens/s": n_tokens / seconds}

        return one_repeat

    return compare({name: run(fwd) for name, (_, fwd) in candidates.items()}, repeats=repeats, warmup=warmup)


def train_benchmark(repeats: int, warmup: int, batch_size: int, steps: int) -> dict:
    # As gptsmith's trainer does. It is process-wide, so every candidate here gets it (see BENCHMARKS.md).
    tune_cpu_allocator()
    cfg = GPTConfig.from_preset("small")
    candidates = candidates_for(cfg)
    ids = torch.randint(0, cfg.vocab_size, (batch_size, cfg.context_length + 1))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    check_same_logits(candidates, inputs[:1, :32])

    def run(module, forward, own_optimizer=False):
        if own_optimizer:  # gptsmith's training step as `gptsmith train` takes it: fused AdamW
            optimizer = build_optimizer(module, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.999))
        else:  # what the book's loop and transformers' Trainer use
            optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=0.1)

        def step():
            logits = forward(inputs)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def one_repeat():
            module.train()
            seconds = timed(lambda: [step() for _ in range(steps)])
            return {"tokens/s": steps * inputs.numel() / seconds}

        return one_repeat

    runs = {name: run(m, fwd) for name, (m, fwd) in candidates.items()}
    # The model alone (same default AdamW as the references) and the model with its own optimizer.
    runs["gptsmith-default-adamw"] = runs["gptsmith"]
    runs["gptsmith"] = run(*candidates["gptsmith"], own_optimizer=True)
    return compare(runs, repeats=repeats, warmup=warmup)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], __name__)
    parser.add_argument("--tokens", type=int, default=1024, help="prefill sequence length (default 1024)")
    parser.add_argument("--batch-size", type=int, default=4, help="training batch size (default 4)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per repeat (default 2)")
    parser.add_argument("--only", choices=["prefill", "train"], default=None, help="run one measurement")
    args = parser.parse_args(argv)
    higher = {"tokens/s": True}
    if args.only in (None, "prefill"):
        results = prefill_benchmark(args.repeats, args.warmup, args.tokens)
        text = print_report(
            f"prefill: gpt2-small, 1 x {args.tokens} tokens, full logits, CPU fp32, inference_mode",
            results,
            higher_is_better=higher,
            notes=["transformers with attn_implementation='sdpa'; same weights, logits checked equal",
                   "gptsmith computes the head with the vocabulary padded to 50,304 (FastLinear); "
                   "gptsmith plain = the same model with nn.Linear layers"],
        )
        write_report(text, args.output)
    if args.only in (None, "train"):
        results = train_benchmark(args.repeats, args.warmup, args.batch_size, args.steps)
        text = print_report(
            f"train step: small preset (6 x 384, context 256), batch {args.batch_size}, "
            f"{args.steps} steps per repeat, forward + loss + backward + AdamW, CPU fp32",
            results,
            higher_is_better=higher,
            notes=[
                "dropout 0 in every candidate; same initial weights and AdamW settings; gptsmith uses its "
                "own fused AdamW (gptsmith.schedule.build_optimizer), gptsmith-default-adamw the references' "
                "torch.optim.AdamW defaults"
            ],
        )
        write_report(text, args.output)
    return 0
