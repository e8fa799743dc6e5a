"""Explain report time for gpt2-small-shaped weights and a 64-token text; attention capture vs transformers.

Goal (issue 12): the whole report (every stage's numbers, six PNG pictures, the HTML page and the
JSON) for gpt2-small-sized weights (124M parameters, random init: no download needed) and a
64-token text in under 10 s on the CPU. Figures per repeat, in seconds:

- ``numbers_s``: ``explain()`` — tokens, embeddings (PCA, cosine over the 50,257-row table), one
  forward pass with the attention hooks and the recomputation, top-k, and stage 5's fresh
  124M-parameter model and its forward pass;
- ``pictures_s``: drawing the PNGs; ``pages_s``: ``to_html()`` + ``to_json()``;
- ``report_s``: the three together — the figure the goal is about; ``report_cpu_s``: the CPU time
  this process spent on them (all threads), which a busy shared machine inflates far less than
  the wall time;
- ``attention_s`` (the same-run reference): one forward pass that yields every layer's attention
  weights — gptsmith's ``run_with_attention`` (fused SDPA forward + hooks + recompute) against
  transformers' ``GPT2LMHeadModel(..., output_attentions=True)`` (eager attention), same weights.

    python -m benchmarks explain --repeats 5
"""

from __future__ import annotations

import os
import time

import torch

from benchmarks.harness import REPO_ROOT, base_parser, compare, print_report, write_report
from benchmarks.model_forward import make_hf
from gptsmith.model.gpt import GPTConfig, GPTModel

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
N_TOKENS = 64


def load_text_and_tokenizer(n_tokens: int):
    """GPT-2's tokenizer and the first ``n_tokens`` tokens of the-verdict.txt (or of the built-in corpus)."""
    if (SHARED_DATA / "gpt2-bpe").is_dir():
        os.environ.setdefault("GPTSMITH_GPT2_BPE", str(SHARED_DATA / "gpt2-bpe"))
    from gptsmith.data.corpus import builtin_documents
    from gptsmith.data.tokenizer import get_tokenizer

    tokenizer = get_tokenizer("gpt2")
    verdict = SHARED_DATA / "the-verdict.txt"
    source = verdict.read_text(encoding="utf-8") if verdict.is_file() else "\n".join(builtin_documents())
    text = tokenizer.decode(tokenizer.encode(source)[:n_tokens])
    if len(tokenizer.encode(text)) != n_tokens:
        raise RuntimeError(f"the first {n_tokens} tokens re-encode to another length; try another --tokens")
    return tokenizer, text


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], __name__)
    parser.add_argument("--tokens", type=int, default=N_TOKENS, help=f"text length (default {N_TOKENS})")
    args = parser.parse_args(argv)

    from gptsmith.explain.attention import run_with_attention
    from gptsmith.explain.report import explain

    tokenizer, text = load_text_and_tokenizer(args.tokens)
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.from_preset("gpt2-small")).eval()
    ids = torch.tensor([tokenizer.encode(text)])
    hf = make_hf(model, attn_implementation="eager")  # eager attention returns the weights
    if hf is not None:
        hf.eval()
    if hf is not None:  # the reference returns the same attention before anything is timed
        with torch.no_grad():
            theirs = torch.stack(hf(ids, output_attentions=True).attentions)[:, 0]  # (layers, heads, n, n)
        ours = run_with_attention(model, ids)[1].weights
        if not torch.allclose(ours, theirs, atol=1e-5):
            raise RuntimeError(f"attention differs from transformers' by {(ours - theirs).abs().max():.2e}")

    def gptsmith_repeat() -> dict[str, float]:
        cpu_start = time.process_time()
        start = time.perf_counter()
        report = explain(model, tokenizer, text, model_name="gpt2-small (random init)")
        numbers = time.perf_counter()
        report.pictures()
        pictures = time.perf_counter()
        report.to_html()
        report.to_json()
        done = time.perf_counter()
        cpu = time.process_time() - cpu_start
        attention_start = time.perf_counter()
        run_with_attention(model, ids)
        attention = time.perf_counter() - attention_start
        return {"report_s": done - start, "numbers_s": numbers - start, "pictures_s": pictures - numbers,
                "pages_s": done - pictures, "report_cpu_s": cpu, "attention_s": attention}

    def transformers_repeat() -> dict[str, float]:
        start = time.perf_counter()
        with torch.no_grad():
            hf(ids, output_attentions=True)
        return {"attention_s": time.perf_counter() - start}

    candidates = {"gptsmith": gptsmith_repeat}
    if hf is not None:
        candidates["transformers"] = transformers_repeat
    results = compare(candidates, repeats=args.repeats, warmup=args.warmup)
    metrics = ("report_s", "numbers_s", "pictures_s", "pages_s", "report_cpu_s", "attention_s")
    text_report = print_report(
        f"explain: gpt2-small-shaped weights (random init), {args.tokens}-token text, CPU fp32",
        results,
        higher_is_better=dict.fromkeys(metrics, False),
        notes=["goal: report_s < 10 s; attention_s ratio < 1 means gptsmith's capture is faster than "
               "transformers' eager output_attentions forward (same weights, weights checked equal)"],
    )
    write_report(text_report, args.output)
    return 0
