"""Classification fine-tuning: examples/s vs llms_from_scratch ch06; memory of full vs LoRA.

``speed`` (default): an epoch over the same SMS spam training texts (balanced, 70 % split: 1,046
texts), stopped after ``--examples`` of them (default: the whole epoch), with the same
gpt2-small-shaped random model (same weights, same new 2-class head), the same trainable layers
(the last block, the final norm and the head, as the book does), batch 8, lr 5e-5, in this
process:

- ``gptsmith``: ``gptsmith.finetune.classify.train_epoch`` as ``gptsmith finetune classify``
  runs it: length-bucketed batches padded to their own longest text, the head read at the last
  real token only (no vocabulary head, no per-position head), bf16 autocast where the CPU has
  native bf16, fused AdamW over the trainable parameters, gradient clipping;
- ``gptsmith-fp32``: the same forced to fp32 (what autocast buys);
- ``llms_from_scratch``: the book's chapter-6 data and loop: ``ch06.SpamDataset`` (every text
  padded to the longest training text), ``DataLoader(shuffle=True, drop_last=True)``,
  ``ch06.calc_loss_batch`` (the head on every position, the last one read), ``zero_grad``,
  ``backward``, ``torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)``; the
  evaluations of ``train_classifier_simple`` are left out, as they are from ours.

``memory``: peak resident memory of a fresh process that builds the gpt2-small-shaped classifier
and runs ``--steps`` training steps, for full fine-tuning (``--trainable all``), the book's
last block, and LoRA (rank 8 on attention + feed-forward, plus the head); with trainable
parameter counts.

    python -m benchmarks classify --repeats 3             # --examples 256: a quarter epoch
    python -m benchmarks classify --mode memory
"""

from __future__ import annotations

import copy
import csv
import json
import tempfile
from pathlib import Path

import torch

from benchmarks.harness import (
    REPO_ROOT,
    base_parser,
    compare,
    print_report,
    run_in_subprocess,
    timed,
    write_report,
)
from benchmarks.model_forward import make_lfs
from gptsmith.data.tokenizer import get_tokenizer
from gptsmith.device import tune_cpu_allocator
from gptsmith.finetune.base import StepRunner, set_trainable
from gptsmith.finetune.class_data import make_splits, read_labelled
from gptsmith.finetune.class_model import GPTClassifier, encode_texts
from gptsmith.finetune.classify import train_epoch
from gptsmith.model.gpt import GPTConfig, GPTModel

SMS = REPO_ROOT.parent / "shared" / "data" / "sms_spam" / "SMSSpamCollection.tsv"


def sms_train_split(path: Path = SMS, seed: int = 123):
    """The balanced 70 % training split of the SMS spam file (texts, 0/1 labels)."""
    data = read_labelled(path, header=False, text_column=1, label_column=0)
    train = make_splits(data, balance_classes=True, seed=seed).train
    return train.texts, [0 if label == "ham" else 1 for label in train.labels]


def make_models(cfg: GPTConfig):
    """(our classifier, the book's model with its new head) with the same weights; last block trainable."""
    torch.manual_seed(0)
    gpt = GPTModel(cfg)
    ours = GPTClassifier(copy.deepcopy(gpt), 2)
    set_trainable(ours, ours.gpt, "last-blocks:1", new_parts=[ours.head])
    book = make_lfs(gpt)
    if book is None:
        return ours, None
    book.out_head = torch.nn.Linear(cfg.emb_dim, 2)  # the book's new head ...
    book.out_head.load_state_dict(ours.head.state_dict())  # ... with our head's initial weights
    for param in book.parameters():  # the book freezes everything, then unfreezes these three parts
        param.requires_grad = False
    for part in (book.trf_blocks[-1], book.final_norm, book.out_head):
        for param in part.parameters():
            param.requires_grad = True
    return ours, book


def gptsmith_epoch(model: GPTClassifier, texts, labels, dtype: str, examples: int):
    tokenizer = get_tokenizer("gpt2")
    data = encode_texts(texts, tokenizer, model.gpt.cfg.context_length, labels)
    runner = StepRunner(model, lr=5e-5, max_steps=10**6, device=torch.device("cpu"), dtype=dtype,
                        emb_dim=model.gpt.cfg.emb_dim, warmup_steps=0)
    seed = [0]

    def one_epoch():
        seed[0] += 1
        seen = [0]

        def enough(step, loss, correct, n):
            seen[0] += n
            return seen[0] >= examples

        seconds = timed(lambda: train_epoch(model, runner, data, 8, seed=seed[0], on_step=enough))
        return {"examples/s": seen[0] / seconds}

    return one_epoch


def book_epoch(model, texts, labels, workdir: Path, examples: int):
    from llms_from_scratch import ch06
    from torch.utils.data import DataLoader

    csv_path = workdir / "train.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Label", "Text"])
        writer.writerows(zip(labels, texts, strict=True))
    dataset = ch06.SpamDataset(csv_path, max_length=None, tokenizer=get_tokenizer("gpt2").encoding)
    loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=0, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    device = torch.device("cpu")

    def one_epoch():
        model.train()

        def loop():
            n = 0
            for input_batch, target_batch in loader:  # train_classifier_simple's body, without evals
                optimizer.zero_grad()
                loss = ch06.calc_loss_batch(input_batch, target_batch, model, device)
                loss.backward()
                optimizer.step()
                n += input_batch.shape[0]
                if n >= examples:
                    break
            return n

        result = {}
        seconds = timed(lambda: result.setdefault("n", loop()))
        return {"examples/s": result["n"] / seconds}

    return one_epoch, dataset.max_length


def speed(args) -> None:
    tune_cpu_allocator()  # process-wide: every candidate gets it
    texts, labels = sms_train_split()
    examples = min(args.examples or len(texts), len(texts))
    cfg = GPTConfig.from_preset(args.preset, drop_rate=0.0)
    ours, book = make_models(cfg)
    ours_fp32 = copy.deepcopy(ours)
    candidates = {"gptsmith": gptsmith_epoch(ours, texts, labels, "auto", examples),
                  "gptsmith-fp32": gptsmith_epoch(ours_fp32, texts, labels, "fp32", examples)}
    notes = []
    with tempfile.TemporaryDirectory() as workdir:
        if book is not None:
            candidates["llms_from_scratch"], padded_to = book_epoch(book, texts, labels, Path(workdir),
                                                                     examples)
            tokenizer = get_tokenizer("gpt2")
            mean_tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts)) / len(texts)
            notes.append(f"book pads every text to {padded_to} tokens; the texts average {mean_tokens:.1f}")
        results = compare(candidates, repeats=args.repeats, warmup=args.warmup)
    notes.append("trainable: last transformer block + final norm + 2-class head in every candidate; "
                 "batch 8; lr 5e-5; no evaluation inside the timed epoch")
    text = print_report(
        f"classification fine-tuning epoch: {args.preset}-shaped random model, SMS spam "
        f"(the first {examples} of an epoch over {len(texts)} balanced training texts), "
        f"{torch.get_num_threads()} threads",
        results, higher_is_better={"examples/s": True}, notes=notes)
    write_report(text, args.output)


MEMORY_CHILD = """
import json, torch
from benchmarks.classify import sms_train_split
from benchmarks.harness import peak_rss_mb
from gptsmith.data.tokenizer import get_tokenizer
from gptsmith.device import tune_cpu_allocator
from gptsmith.finetune.base import StepRunner, set_trainable
from gptsmith.finetune.class_model import GPTClassifier, encode_texts
from gptsmith.finetune.classify import train_epoch
from gptsmith.finetune.lora import LoRAConfig, apply_lora, count_parameters
from gptsmith.model.gpt import GPTConfig, GPTModel
tune_cpu_allocator()
torch.manual_seed(0)
model = GPTClassifier(GPTModel(GPTConfig.from_preset({preset!r}, drop_rate=0.0)), 2)
mode = {mode!r}
if mode == "lora":
    apply_lora(model, LoRAConfig(rank=8, alpha=16))
    model.head.requires_grad_(True)
else:
    set_trainable(model, model.gpt, mode, new_parts=[model.head])
texts, labels = sms_train_split()
data = encode_texts(texts[: 8 * {steps}], get_tokenizer("gpt2"), 1024, labels[: 8 * {steps}])
runner = StepRunner(model, lr=5e-5, max_steps=10**6, device=torch.device("cpu"), emb_dim=768)
train_epoch(model, runner, data, 8, seed=0)
counts = count_parameters(model)
print(json.dumps({{"peak_rss_mb": peak_rss_mb(), "trainable_params": counts.trainable,
                  "total_params": counts.total}}))
"""


def memory(args) -> None:
    results = {}
    for mode in ("all", "last-blocks:1", "lora"):
        name = {"all": "full", "last-blocks:1": "last block (book)", "lora": "LoRA r8"}[mode]
        figures = run_in_subprocess(MEMORY_CHILD.format(preset=args.preset, mode=mode, steps=args.steps),
                                    timeout=3600)
        results[name] = {k: [v] for k, v in figures.items()}
    text = print_report(
        f"classification fine-tuning memory: {args.preset}-shaped model, batch 8, {args.steps} steps, "
        "fresh process per mode", results, baseline="full",
        higher_is_better={"peak_rss_mb": False, "trainable_params": False},
        notes=["peak_rss_mb = the process's VmHWM: weights + gradients + AdamW state + activations + "
               "the interpreter and torch (~0.3-0.4 GB)"])
    write_report(text, args.output)
    print(json.dumps({name: {k: v[0] for k, v in f.items()} for name, f in results.items()}))


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], __name__)
    parser.add_argument("--mode", choices=["speed", "memory"], default="speed")
    parser.add_argument("--preset", default="gpt2-small", help="model shape (default gpt2-small)")
    parser.add_argument("--examples", type=int, default=0,
                        help="speed: stop each epoch after this many texts (default: all 1,046)")
    parser.add_argument("--steps", type=int, default=10, help="memory: training steps (default 10)")
    args = parser.parse_args(argv)
    if not SMS.is_file():
        print(f"SMS spam data not found at {SMS}", flush=True)
        return 2
    if args.mode == "speed":
        speed(args)
    else:
        memory(args)
    return 0
