"""Instruction fine-tuning examples/s vs llms_from_scratch's chapter-7 loop; LoRA's parameters and memory.

Same gpt2-small-shaped model (random weights, copied between the candidates), the same batches of
8 records in file order from ``instruction-data.json``'s training split (the book's 85%), the
same process and thread count:

- ``gptsmith``: ``gptsmith.finetune.base.StepRunner`` on ``instruct.batch_loss`` as ``gptsmith
  finetune instruct`` runs it (bf16 autocast where the CPU has native bf16, fused AdamW with decay
  on matrices, clipping), on batches from ``instruct_data.collate``;
- ``gptsmith-lora``: the same with LoRA rank 16 on the attention and feed-forward projections;
- ``llms_from_scratch``: ``ch04.GPTModel`` with the book's ch07 pipeline (``InstructionDataset``,
  ``custom_collate_fn``) and ch05 loop body (``calc_loss_batch``, ``zero_grad``, ``backward``,
  ``torch.optim.AdamW(lr=5e-5, weight_decay=0.1)``), fp32.

Before timing, gptsmith's batches are checked to equal the book's (inputs and targets). Peak
memory is each candidate's peak RSS in a fresh process running ``--memory-steps`` steps.

    python -m benchmarks instruct --repeats 3 --batches 2
"""

from __future__ import annotations

import copy
import gc
import json
from pathlib import Path

import torch

from benchmarks.harness import (
    REPO_ROOT,
    base_parser,
    compare,
    optional_import,
    print_report,
    run_in_subprocess,
    timed,
    write_report,
)
from benchmarks.model_forward import make_lfs
from gptsmith.device import tune_cpu_allocator
from gptsmith.finetune.base import StepRunner
from gptsmith.finetune.instruct import batch_loss
from gptsmith.finetune.instruct_data import collate, encode_records, load_instruction_file, split_records
from gptsmith.finetune.lora import LoRAConfig, apply_lora, count_parameters
from gptsmith.model.gpt import GPTConfig, GPTModel

DATA = REPO_ROOT.parent / "shared" / "data" / "instruction-data.json"
BATCH_SIZE = 8
LORA_RANK = 16


def gptsmith_batches(path: Path, n_batches: int, tokenizer) -> list[tuple[torch.Tensor, torch.Tensor]]:
    train, _, _ = split_records(load_instruction_file(path))
    examples = encode_records(train[: n_batches * BATCH_SIZE], tokenizer, "alpaca", 1024).examples
    starts = range(0, len(examples), BATCH_SIZE)
    return [collate(examples[i : i + BATCH_SIZE], tokenizer.eot_id) for i in starts]


def book_batches(path: Path, n_batches: int, ch07, encoding) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The book's pipeline: its split (first 85%), InstructionDataset, custom_collate_fn."""
    data = json.loads(path.read_text(encoding="utf-8"))
    train = data[: int(len(data) * 0.85)][: n_batches * BATCH_SIZE]
    dataset = ch07.InstructionDataset(train, encoding)

    def collate_fn(batch):
        return ch07.custom_collate_fn(batch, allowed_max_length=1024)

    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=False, collate_fn=collate_fn)
    return list(loader)


def make_candidates(n_batches: int, only: str | None = None) -> tuple[dict, dict]:
    """{name: one-repeat function} and {name: trainable parameters}; ``only``: build just that one
    (a fresh process measuring its memory)."""
    from gptsmith.data.tokenizer import get_tokenizer

    tune_cpu_allocator()
    tokenizer = get_tokenizer("gpt2")
    ours = gptsmith_batches(DATA, n_batches, tokenizer)
    cfg = GPTConfig.from_preset("gpt2-small", drop_rate=0.0)
    torch.manual_seed(0)
    model = GPTModel(cfg)
    steps, trainable = {}, {}

    def our_step(module):
        runner = StepRunner(module, lr=5e-5, max_steps=1, device=torch.device("cpu"), weight_decay=0.1,
                            warmup_steps=0, min_lr=5e-5, grad_clip=1.0, emb_dim=cfg.emb_dim)
        return lambda x, y: runner.run(lambda: batch_loss(module, x, y))

    batches = {"gptsmith": ours, "gptsmith-lora": ours}
    ch07, ch05 = optional_import("llms_from_scratch.ch07"), optional_import("llms_from_scratch.ch05")
    lfs = None
    if ch07 is not None and ch05 is not None and only in (None, "llms_from_scratch"):
        lfs = make_lfs(model)
    if only in (None, "gptsmith-lora"):
        lora_model = model if only else copy.deepcopy(model)
        apply_lora(lora_model, LoRAConfig(rank=LORA_RANK))
        steps["gptsmith-lora"] = our_step(lora_model)
        trainable["gptsmith-lora"] = count_parameters(lora_model).trainable
    if only in (None, "gptsmith"):
        steps["gptsmith"], trainable["gptsmith"] = our_step(model), count_parameters(model).trainable
    del model
    if lfs is not None:
        theirs = book_batches(DATA, n_batches, ch07, tokenizer.encoding)
        for (x, y), (bx, by) in zip(ours, theirs, strict=True):
            if not (torch.equal(x, bx) and torch.equal(y, by)):
                raise RuntimeError("gptsmith's batches differ from the book's")
        optimizer = torch.optim.AdamW(lfs.parameters(), lr=5e-5, weight_decay=0.1)
        lfs.train()

        def book_step(x, y):
            optimizer.zero_grad()
            loss = ch05.calc_loss_batch(x, y, lfs, "cpu")
            loss.backward()
            optimizer.step()

        steps["llms_from_scratch"] = book_step
        batches["llms_from_scratch"] = theirs
        trainable["llms_from_scratch"] = sum(p.numel() for p in lfs.parameters() if p.requires_grad)

    def run(name):
        def one_repeat():
            seconds = timed(lambda: [steps[name](x, y) for x, y in batches[name]])
            return {"examples/s": BATCH_SIZE * len(batches[name]) / seconds}

        return one_repeat

    order = [n for n in ("gptsmith", "gptsmith-lora", "llms_from_scratch") if n in steps]
    return {name: run(name) for name in order}, trainable


MEMORY_CODE = """
import json, torch
from benchmarks.harness import peak_rss_mb
from benchmarks.instruct import make_candidates
candidates, _ = make_candidates({n}, only={name!r})
for _ in range({steps}):
    candidates[{name!r}]()
print(json.dumps({{"peak_rss_mb": peak_rss_mb()}}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], __name__)
    parser.add_argument("--batches", type=int, default=2, help="batches of 8 records per repeat (default 2)")
    parser.add_argument("--memory-steps", type=int, default=1,
                        help="repeats per fresh process for peak memory (default 1; 0: skip)")
    args = parser.parse_args(argv)
    if not DATA.is_file():
        print(f"instruction data not found at {DATA}")
        return 1
    candidates, trainable = make_candidates(args.batches)
    results = compare(candidates, repeats=args.repeats, warmup=args.warmup)
    del candidates  # the memory figures come from fresh processes: free this one's models first
    gc.collect()
    title = (f"instruction fine-tuning: gpt2-small shape, batches of {BATCH_SIZE} records of "
             f"instruction-data.json (first {args.batches} batches of the training split per repeat), "
             f"{torch.get_num_threads()} threads")
    speed = print_report(title + " (speed)", results, higher_is_better={"examples/s": True})
    write_report(speed, args.output)
    for name in results:
        results[name]["trainable parameters"] = [float(trainable[name])]
        if args.memory_steps:
            code = MEMORY_CODE.format(n=args.batches, steps=args.memory_steps, name=name)
            results[name]["peak RSS MiB"] = [run_in_subprocess(code)["peak_rss_mb"]]
    text = print_report(
        title,
        results,
        higher_is_better={"examples/s": True, "trainable parameters": False, "peak RSS MiB": False},
        notes=["gptsmith = finetune.base.StepRunner on instruct.batch_loss (bf16 autocast if the CPU has "
               "native bf16, fused AdamW, clipping); gptsmith-lora = the same with LoRA rank 16 "
               "(attention + feed-forward); "
               "llms_from_scratch = ch07 data pipeline + ch05 loop, fp32, default AdamW",
               "peak RSS: one fresh process per candidate (model build, batches, "
               f"{args.memory_steps} repeat(s) of {args.batches} steps)"],
    )
    write_report(text, args.output)
    return 0
