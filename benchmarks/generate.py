"""Decode speed: gpt2-small greedy generation, batch 1, 32-token prompt, 256 new tokens, CPU.

Candidates, all with the same random weights (copied from the gptsmith model; their greedy tokens
are checked to agree before anything is timed):

- gptsmith: ``generate(model, ids, n)`` as any Python caller runs it, no extra call (KV cache,
  ``last_token_only``, inference mode, the ``FastLinear`` CPU kernels), fp32;
- transformers: ``GPT2LMHeadModel.generate(use_cache=True, do_sample=False)``, SDPA attention;
- llms_from_scratch (KV cache): ``llms_from_scratch.kv_cache`` GPTModel + ``generate_text_simple``;
- llms_from_scratch (no cache): ``ch05.generate`` on ``ch04.GPTModel`` (re-reads the whole context
  every step);
- gptsmith plain nn.Linear: ``generate`` with every ``FastLinear`` turned back into ``nn.Linear``;
- gptsmith bf16: bf16 weights (``model.to(torch.bfloat16)``; oneDNN's packed weights, or on CPUs
  where oneDNN cannot run bf16, fbgemm's fp16-packed weights);
- gptsmith int8: ``use_int8_decoding(model)`` (``--dtype int8``: fbgemm int8 weights, one scale per
  output feature, activations quantized on the fly); for comparison torch's ``quantize_dynamic``
  (the same kernels, one scale per matrix; deprecated), and with ``--torchao`` torchao's
  ``Int8WeightOnlyConfig`` (weight-only int8).

Figures per repeat: time to first token (a 1-token generation: prefill + one step), and decode
tokens/s = (n - 1) / (time for n tokens - time to first token). The memory-bandwidth bound is
copy bandwidth (measured here: bytes read + bytes written by one large tensor copy, per second)
divided by the bytes of weights one decode step must read (every matrix once; the embedding
tables only one row each, the output head in full).

    python -m benchmarks generate --repeats 3
"""

from __future__ import annotations

import copy
import time
import warnings

import torch

from benchmarks.harness import base_parser, compare, optional_import, print_report, write_report
from benchmarks.model_forward import lfs_config, make_hf, make_lfs, plain_linear
from gptsmith.generate.generation import generate
from gptsmith.model.fast_linear import use_int8_decoding
from gptsmith.model.gpt import GPTConfig, GPTModel

HIGHER = {"decode tokens/s": True, "time to first token ms": False, "% of bandwidth bound": True}


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second moved (read + written) by copying a large fp32 tensor; the best of ``repeats``."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second read by summing a large fp32 tensor (a read-only stream, like a GEMV)."""
    src = torch.ones(megabytes * 2**20 // 4)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        src.sum()
        best = min(best, time.perf_counter() - start)
    return src.numel() * 4 / best


def weight_bytes_per_token(model: GPTModel) -> int:
    """Bytes of parameters one decode step reads: all of them except the embedding tables (one row
    each), but including the output head (which reads the tied token embedding in full)."""
    total = 0
    for name, param in model.named_parameters():  # a tied tensor is listed once, as tok_emb
        if name in ("tok_emb.weight", "pos_emb.weight"):
            continue
        total += param.numel() * param.element_size()
    head = model.out_head.weight
    return total + head.numel() * head.element_size() if model.cfg.tie_weights else total


def make_lfs_kv(model: GPTModel):
    """llms_from_scratch.kv_cache's GPTModel with ``model``'s weights."""
    kv = optional_import("llms_from_scratch.kv_cache.gpt2")
    reference = make_lfs(model)
    if kv is None or reference is None:
        return None
    other = kv.GPTModel(lfs_config(model.cfg))
    for block in other.trf_blocks:
        block.att.forward = _fixed_lfs_kv_attention.__get__(block.att)
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("att.mask")}
    other.load_state_dict(state)
    other.out_head.weight = other.tok_emb.weight
    return other.eval()


def _fixed_lfs_kv_attention(self, x, use_cache=False, start_pos=0, cache=None):
    """llms_from_scratch.kv_cache.gpt2.MultiHeadAttention.forward, verbatim except one line.

    The installed version slices the causal mask's columns (``mask[:, -num_tokens:]``) where it
    means its rows, so a 1-token decode step with a cache fails to broadcast; rows are used here.
    """
    b, num_tokens, _ = x.shape
    keys = self.W_key(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
    values = self.W_value(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
    queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
    if use_cache:
        if cache is not None:
            keys = torch.cat([cache[0], keys], dim=2)
            values = torch.cat([cache[1], values], dim=2)
        next_cache = (keys, values)
    else:
        next_cache = None
    seq_len = keys.size(2)
    causal_mask = torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool, device=x.device), diagonal=1)
    causal_mask = causal_mask[-num_tokens:, :][None, None, :, :]  # the fix: rows, not columns
    attn_scores = queries @ keys.transpose(2, 3)
    attn_scores.masked_fill_(causal_mask, -torch.inf)
    attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
    attn_weights = self.dropout(attn_weights)
    context_vec = (attn_weights @ values).transpose(1, 2)
    context_vec = context_vec.contiguous().view(b, num_tokens, self.d_out)
    return self.out_proj(context_vec), next_cache


@torch.no_grad()
def lfs_kv_generate(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding with llms_from_scratch's KV-cached GPT-2 (its generate_text_simple, for GPT-2)."""
    from llms_from_scratch.kv_cache.utils import KVCache

    model.current_pos = 0  # the model's own position counter (its reset)
    cache = KVCache(n_layers=len(model.trf_blocks))
    logits = model(ids, use_cache=True, cache=cache)
    for _ in range(n):
        next_idx = logits[:, -1].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, next_idx], dim=1)
        logits = model(next_idx, use_cache=True, cache=cache)
    return ids


def quantize_int8(model: GPTModel, use_torchao: bool = False) -> torch.nn.Module | None:
    """An int8 copy of ``model`` by another route than ours (``use_int8_decoding``): torch's
    ``quantize_dynamic`` (int8 weights, activations quantized on the fly; fbgemm kernels; one scale
    per matrix), or torchao's weight-only int8 (None when torchao is missing)."""
    quantized = plain_linear(model)  # quantize_dynamic maps nn.Linear itself, not subclasses
    quantized.out_head.weight = torch.nn.Parameter(model.out_head.weight.detach().clone())  # untie
    if use_torchao:
        torchao = optional_import("torchao.quantization")
        if torchao is None:
            return None
        torchao.quantize_(quantized, torchao.Int8WeightOnlyConfig())
        return quantized
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return quantize_dynamic(quantized, {torch.nn.Linear}, dtype=torch.qint8)


def generators(model: GPTModel, variants: bool, torchao: bool) -> tuple[dict, list[str]]:
    """{name: fn(ids, n) -> ids (1, n_prompt + n)} for every candidate, and notes about them."""
    notes = ["gptsmith = generate(model, ids, n) with no extra call (FastLinear kernels); gptsmith plain "
             "= the same model with nn.Linear layers"]
    candidates = {"gptsmith": lambda ids, n: generate(model, ids, n)}
    hf = make_hf(model)
    if hf is not None:
        hf.eval()
        hf.generation_config.eos_token_id = None
        hf.generation_config.pad_token_id = 0

        def hf_generate(ids, n):
            return hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                use_cache=True,
            )

        candidates["transformers"] = hf_generate
    kv = make_lfs_kv(model)
    if kv is not None:
        candidates["lfs kv-cache"] = lambda ids, n: lfs_kv_generate(kv, ids, n)
        notes.append(
            "lfs kv-cache: llms_from_scratch.kv_cache.gpt2.GPTModel + its KVCache, driven the way "
            "kv_cache.generate.generate_text_simple does (that function itself expects the Qwen3/Llama3 "
            "models' reset_kv_cache(), which the GPT-2 model lacks)"
        )
    lfs = make_lfs(model)
    if lfs is not None:
        lfs.eval()
        ch05 = optional_import("llms_from_scratch.ch05")
        context = model.cfg.context_length
        candidates["lfs no-cache"] = lambda ids, n: ch05.generate(lfs, ids, n, context_size=context)
    if variants:
        plain = plain_linear(model)
        candidates["gptsmith plain"] = lambda ids, n: generate(plain, ids, n)
        bf16 = copy.deepcopy(model).to(torch.bfloat16)
        candidates["gptsmith bf16"] = lambda ids, n: generate(bf16, ids, n)
        int8 = use_int8_decoding(copy.deepcopy(model))
        candidates["gptsmith int8"] = lambda ids, n: generate(int8, ids, n)
        notes.append("gptsmith int8 = use_int8_decoding(model) (what --dtype int8 does: fbgemm int8 "
                     "weights, one scale per output feature)")
        int8_dynamic = quantize_int8(model)
        candidates["gptsmith int8 quantize_dynamic"] = lambda ids, n: generate(int8_dynamic, ids, n)
        notes.append("gptsmith int8 quantize_dynamic = torch.ao.quantization.quantize_dynamic(qint8) on "
                     "every Linear (deprecated in torch 2.13; for comparison)")
    if torchao:
        int8_ao = quantize_int8(model, use_torchao=True)
        if int8_ao is not None:
            candidates["gptsmith int8 torchao"] = lambda ids, n: generate(int8_ao, ids, n)
            notes.append("gptsmith int8 torchao = torchao.quantization.Int8WeightOnlyConfig")
    return candidates, notes


def check_agreement(candidates: dict, ids: torch.Tensor, n: int) -> list[str]:
    """Greedy tokens of each candidate vs gptsmith fp32 (low precision may drift: reported, not fatal)."""
    reference = candidates["gptsmith"](ids, n)[0, ids.shape[1] :].tolist()
    notes = []
    for name, fn in candidates.items():
        tokens = fn(ids, n)[0, ids.shape[1] :].tolist()
        same = next((i for i, (a, b) in enumerate(zip(tokens, reference, strict=True)) if a != b), n)
        if same < n:
            if name.startswith(("gptsmith bf16", "gptsmith int8")):
                notes.append(f"{name}: first {same} of {n} greedy tokens equal fp32's (lower precision)")
            else:
                raise RuntimeError(f"{name} disagrees with gptsmith at greedy token {same}")
    return notes


AGREEMENT_PROMPTS = ("ROMEO:", "First Citizen:\nWe are", "The king", "O, what a", "KING RICHARD III:\n")


def agreement(model_dir: str, n: int) -> str:
    """How far the greedy tokens of bf16 and int8 weights follow fp32's, on a trained checkpoint."""
    from gptsmith.data.tokenizer import get_tokenizer
    from gptsmith.model.checkpoint import load_model

    model = load_model(model_dir)
    tokenizer = get_tokenizer("gpt2")
    variants = {"bf16": copy.deepcopy(model).to(torch.bfloat16),
                "int8": use_int8_decoding(copy.deepcopy(model)),
                "int8 quantize_dynamic": quantize_int8(model)}
    lines = [f"greedy-token agreement with fp32 on {model_dir} ({n} new tokens per prompt)"]
    same = {name: [] for name in variants}
    for prompt in AGREEMENT_PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt)])
        reference = generate(model, ids, n)[0, ids.shape[1]:].tolist()
        for name, variant in variants.items():
            tokens = generate(variant, ids, n)[0, ids.shape[1]:].tolist()
            first = next((i for i, (a, b) in enumerate(zip(tokens, reference, strict=True)) if a != b), n)
            same[name].append(first)
    for name, firsts in same.items():
        whole = sum(f == n for f in firsts)
        median = sorted(firsts)[len(firsts) // 2]
        lines.append(f"  {name}: first difference after {sorted(firsts)} tokens (prompts sorted; median "
                     f"{median}); {whole} of {len(firsts)} prompts identical throughout")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], __name__)
    parser.add_argument("--prompt-tokens", type=int, default=32, help="prompt length (default 32)")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens to generate (default 256)")
    parser.add_argument("--no-variants", action="store_true", help="skip the bf16 and int8 variants")
    parser.add_argument(
        "--torchao", action="store_true", help="also try torchao weight-only int8 (slow on CPU)"
    )
    parser.add_argument("--skip", action="append", default=[], help="leave out a candidate (repeatable)")
    parser.add_argument("--preset", default="gpt2-small", help="model preset (default gpt2-small)")
    parser.add_argument("--agreement", metavar="MODEL_DIR",
                        help="instead: greedy-token agreement of bf16/int8 with fp32 on this trained model")
    args = parser.parse_args(argv)
    if args.agreement:
        text = agreement(args.agreement, args.new_tokens)
        print(text)
        write_report(text, args.output)
        return 0

    torch.manual_seed(0)
    model = GPTModel(GPTConfig.from_preset(args.preset, drop_rate=0.0)).eval()
    ids = torch.randint(0, model.cfg.vocab_size, (1, args.prompt_tokens))
    candidates, notes = generators(model, variants=not args.no_variants, torchao=args.torchao)
    candidates = {k: v for k, v in candidates.items() if k not in args.skip}
    notes += check_agreement(candidates, ids, 16)

    n = args.new_tokens

    def one_repeat(fn):
        def run():
            first = _timed(lambda: fn(ids, 1))
            total = _timed(lambda: fn(ids, n))
            return {"decode tokens/s": (n - 1) / (total - first), "time to first token ms": 1000 * first}

        return run

    results = compare(
        {k: one_repeat(fn) for k, fn in candidates.items()}, repeats=args.repeats, warmup=args.warmup
    )

    bandwidth = copy_bandwidth()
    for name, figures in results.items():
        bytes_per_value = 2 if name == "gptsmith bf16" else 1 if name.startswith("gptsmith int8") else 4
        bytes_per_token = weight_bytes_per_token(model) * bytes_per_value // 4
        bound = bandwidth / bytes_per_token
        figures["% of bandwidth bound"] = [100 * v / bound for v in figures["decode tokens/s"]]
    fp32_bytes = weight_bytes_per_token(model)
    notes += [
        f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write); weights read per token: fp32 "
        f"{fp32_bytes / 1e6:.0f} MB -> bound {bandwidth / fp32_bytes:.1f} tokens/s "
        f"(bf16: x2, int8: x4 fewer bytes)",
        f"read-only bandwidth (tensor.sum) {read_bandwidth() / 1e9:.1f} GB/s, for comparison",
        "decode tokens/s = (n - 1) / (t(n tokens) - t(1 token)); same weights; greedy tokens checked equal",
    ]
    text = print_report(
        f"generate: {args.preset}, random weights, batch 1, {args.prompt_tokens}-token prompt, "
        f"{n} new tokens, greedy, CPU",
        results,
        higher_is_better=HIGHER,
        notes=notes,
    )
    write_report(text, args.output)
    return 0


def _timed(fn) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
