"""Prepare tokens/s vs bare tiktoken encode_ordinary; dataset peak RSS vs llms_from_scratch GPTDatasetV1.

Two measurements:

- throughput (tokens/s): ``gptsmith.data.prepare_corpus`` (read, cut at safe boundaries, batch
  encode on all cores, write the uint16 shard with its checksum) against reading the file and
  calling tiktoken's ``encode_ordinary`` on it, on tinyshakespeare.txt and the largest corpus in
  ../shared/data (shakespeare_complete.txt). Both use the same GPT-2 ``tiktoken.Encoding``.
- memory (peak RSS, MiB): in a fresh subprocess per measurement, tokenize a corpus and serve
  every (input, target) window at max_length 256, stride 1: gptsmith's prepare + memmap +
  ``SlidingWindowDataset`` against ``llms_from_scratch.ch02.GPTDatasetV1``, which stores every
  window as two tensors. ``dataset_mb`` is the peak minus the RSS right after the imports.

    python -m benchmarks prepare --repeats 5
    python -m benchmarks prepare --repeats 3 --memory-repeats 2 --corpora tinyshakespeare
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks.harness import (
    base_parser,
    compare,
    optional_import,
    print_report,
    run_in_subprocess,
    write_report,
)
from gptsmith.data.corpus import resolve_corpus
from gptsmith.data.shards import prepare_corpus
from gptsmith.data.tokenizer import get_tokenizer

# Child-process code for the memory measurement; both children import the same modules first
# so the baseline RSS is comparable.
_MEMORY_CHILD = """
import json, tempfile
import numpy as np, torch
from benchmarks.harness import peak_rss_mb
from gptsmith.data.windows import SlidingWindowDataset
from gptsmith.data.shards import prepare_corpus
from gptsmith.data.tokenizer import get_tokenizer
tokenizer = get_tokenizer("gpt2")
if which == "llms_from_scratch":
    from llms_from_scratch.ch02 import GPTDatasetV1
base = peak_rss_mb()
checksum = 0
if which == "gptsmith":
    with tempfile.TemporaryDirectory() as out:
        shard = prepare_corpus(path, tokenizer=tokenizer, out_dir=out)
        dataset = SlidingWindowDataset(shard.tokens, max_length, stride)
        for i in range(len(dataset)):
            checksum += int(dataset[i][1][-1])
        n = len(dataset)
else:
    text = open(path, encoding="utf-8").read()
    dataset = GPTDatasetV1(text, tokenizer.encoding, max_length, stride)
    for i in range(len(dataset)):
        checksum += int(dataset[i][1][-1])
    n = len(dataset)
peak = peak_rss_mb()
print(json.dumps({"peak_rss_mb": peak, "dataset_mb": peak - base, "windows": n, "checksum": checksum}))
"""


def throughput_candidates(path: Path, tokenizer, workdir: Path) -> tuple[dict, int]:
    """The two throughput candidates for one corpus file, and its token count."""
    encoding = tokenizer.encoding
    n_tokens = len(encoding.encode_ordinary(path.read_text(encoding="utf-8")))

    def gptsmith_prepare() -> dict[str, float]:
        import time

        start = time.perf_counter()
        shard = prepare_corpus(path, tokenizer=tokenizer, out_dir=workdir / path.stem, force=True)
        seconds = time.perf_counter() - start
        return {"tokens/s": len(shard) / seconds}

    def bare_tiktoken() -> dict[str, float]:
        import time

        start = time.perf_counter()
        ids = encoding.encode_ordinary(path.read_text(encoding="utf-8"))
        seconds = time.perf_counter() - start
        return {"tokens/s": len(ids) / seconds}

    return {"gptsmith": gptsmith_prepare, "tiktoken": bare_tiktoken}, n_tokens


def memory_candidates(path: Path, max_length: int, stride: int) -> dict:
    """Peak-RSS candidates, each measured in its own subprocess."""

    def child(which: str):
        def measure() -> dict[str, float]:
            setup = f"path, which, max_length, stride = {str(path)!r}, {which!r}, {max_length}, {stride}\n"
            code = setup + _MEMORY_CHILD
            figures = run_in_subprocess(code, env={"TOKENIZERS_PARALLELISM": "false"})
            return {"peak_rss_mb": figures["peak_rss_mb"], "dataset_mb": figures["dataset_mb"]}

        return measure

    candidates = {"gptsmith": child("gptsmith")}
    if optional_import("llms_from_scratch.ch02") is not None:
        candidates["llms_from_scratch"] = child("llms_from_scratch")
    return candidates


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and print (and optionally append) the reports."""
    parser = base_parser(__doc__.splitlines()[0], __name__)
    parser.add_argument("--corpora", default="tinyshakespeare,shakespeare_complete",
                        help="named corpora or paths to time (default: tinyshakespeare,shakespeare_complete)")
    parser.add_argument("--memory-corpus", default="tinyshakespeare", help="corpus for the memory figure")
    parser.add_argument("--memory-repeats", type=int, default=2, help="subprocess runs each (default 2)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)

    tokenizer = get_tokenizer("gpt2")
    higher = {"tokens/s": True, "peak_rss_mb": False, "dataset_mb": False}
    reports = []
    with tempfile.TemporaryDirectory(prefix="gptsmith-bench-") as tmp:
        for name in args.corpora.split(","):
            path = resolve_corpus(name).paths[0]
            candidates, n_tokens = throughput_candidates(path, tokenizer, Path(tmp))
            results = compare(candidates, repeats=args.repeats, warmup=args.warmup)
            notes = [f"{path.name}: {n_tokens:,} tokens, {path.stat().st_size:,} bytes; "
                     f"prepare uses {os.cpu_count()} encoder threads"]
            title = f"prepare throughput: {path.name}"
            reports.append(print_report(title, results, "gptsmith", higher, notes))
    if not args.skip_memory:
        path = resolve_corpus(args.memory_corpus).paths[0]
        candidates = memory_candidates(path, args.max_length, args.stride)
        results = compare(candidates, repeats=args.memory_repeats, warmup=0)
        notes = [f"{path.name}, max_length {args.max_length}, stride {args.stride}; every window served once"]
        if "llms_from_scratch" not in candidates:
            notes.append("llms_from_scratch not installed (make bench): reference left out")
        reports.append(print_report("dataset peak RSS", results, "gptsmith", higher, notes))
    write_report("\n\n".join(reports), args.output)
    return 0
