"""Sub-commands about data: ``prepare`` (corpus -> token shard) and ``download`` (BPE files, corpora)."""

from __future__ import annotations

import argparse
import os
import sys

from gptsmith.data.download import CORPUS_URLS

DOWNLOADABLE = ["gpt2-bpe", *sorted(CORPUS_URLS)]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare`` and ``download``."""
    prepare = subparsers.add_parser(
        "prepare",
        help="tokenize a corpus into a token shard on disk (reused when the corpus is unchanged)",
        description=(
            "Tokenize a corpus once into a token shard: tokens.bin (uint16, or uint32 for vocabularies "
            "over 65,536 ids) + docs.npy (document starts) + meta.json (tokenizer, counts, source, "
            "checksum). Documents are joined with <|endoftext|>; GPT-2 BPE encodes in batches on all "
            "cores. Running it again on an unchanged corpus reuses the shard."
        ),
        epilog=(
            "CORPUS is one of: builtin (CPython's documentation, no download), a named corpus\n"
            "(the-verdict, tinyshakespeare, ... looked up in $GPTSMITH_DATA_DIR, $GPTSMITH_SHARED_DATA,\n"
            "../shared/data beside the gptsmith checkout and the cache), a text file (any suffix but\n"
            ".json), a directory of .txt/.md files, a glob, a .jsonl (text field) or .parquet (text\n"
            "column; needs pyarrow) file, or hf:NAME, hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT (needs\n"
            "the `datasets` package).\n\n"
            "examples:\n"
            "  gptsmith prepare                          # the built-in corpus, into the user cache\n"
            "  gptsmith prepare the-verdict --out data/verdict\n"
            "  gptsmith prepare 'notes/**/*.md' --tokenizer gpt2"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_argument("corpus", nargs="?", default="builtin", metavar="CORPUS",
                         help="what to tokenize (default: builtin)")
    prepare.add_argument("--tokenizer", default="gpt2", type=str.lower, choices=["gpt2", "simple"],
                         help="gpt2 (default: GPT-2's BPE) or simple (word-level; its vocabulary is "
                              "every word of this corpus, saved as vocab.json in the shard)")
    prepare.add_argument("--out", default=None, metavar="DIR",
                         help="shard directory: new, empty or a shard (default: a directory in the user "
                              "cache, printed at the end)")
    prepare.add_argument("--text-field", default="text", help="JSONL field / Parquet column holding the text")
    prepare.add_argument("--threads", type=int, default=None, help="encoder threads (default: all cores)")
    prepare.add_argument("--split", default="0.8,0.1,0.1", metavar="TRAIN,VAL,TEST",
                         help="fractions to report the split sizes for (default: 0.8,0.1,0.1)")
    prepare.add_argument("--force", action="store_true", help="tokenize again even if the shard is current, "
                         "and replace a shard of another corpus in --out")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")
    prepare.set_defaults(func=run_prepare)

    download = subparsers.add_parser(
        "download",
        help="fetch GPT-2's BPE files (works with only PyPI reachable) or a toy corpus into the cache",
        description=(
            "gpt2-bpe: GPT-2's byte-pair ranks, from tiktoken's cache, OpenAI's public URL, or (when only "
            "PyPI is reachable) the openai-whisper source package, which ships the same file; the "
            "sha256 is checked. the-verdict / tinyshakespeare: the toy corpora (needs internet). "
            "Files go to $GPTSMITH_CACHE_DIR (default $XDG_CACHE_HOME/gptsmith, else ~/.cache/gptsmith)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    download.add_argument("what", choices=DOWNLOADABLE, metavar="WHAT", help=", ".join(DOWNLOADABLE))
    download.add_argument("--force", action="store_true", help="fetch again even if cached")
    download.set_defaults(func=run_download)


def _parse_fractions(text: str) -> list[float]:
    """``--split``'s fractions, checked before any work is done."""
    from gptsmith.data.windows import check_split_fractions
    from gptsmith.errors import ConfigError

    try:
        fractions = [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--split {text!r}: expected fractions like 0.8,0.1,0.1") from None
    try:
        return check_split_fractions(fractions)
    except ConfigError as exc:
        raise ConfigError(f"--split {text!r}: {exc}") from None


def run_prepare(args: argparse.Namespace) -> int:
    """Tokenize (or reuse) the shard and print where it is and what it holds."""
    from gptsmith.cli.progress import Progress
    from gptsmith.data.corpus import resolve_corpus
    from gptsmith.data.shards import prepare_corpus
    from gptsmith.data.windows import split_tokens
    from gptsmith.errors import ConfigError

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    fractions = _parse_fractions(args.split)
    source = resolve_corpus(args.corpus, text_field=args.text_field)
    bar = None

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        if args.no_progress:
            return
        if bar is None:
            bar = Progress(total, unit="bytes", unit_scale=True, desc=f"tokenizing {source.name}",
                           leave=False)
        bar.update(done)

    try:
        shard = prepare_corpus(source, args.tokenizer, args.out, progress, num_threads=args.threads,
                               force=args.force)
    finally:
        if bar is not None:
            bar.close()
    meta = shard.meta
    parts = split_tokens(shard, fractions)
    how = "reused (corpus unchanged)" if shard.reused else "written"
    print(f"shard {how}: {shard.path}")
    print(f"  {meta['n_tokens']:,} tokens ({meta['dtype']}), {meta['n_documents']:,} document(s), "
          f"tokenizer {meta['tokenizer']} ({meta['vocab_size']:,} ids), source {meta['source']}")
    print("  split: " + ", ".join(f"{name} {len(part):,}" for name, part in parts.items()) + " tokens")
    return 0


def run_download(args: argparse.Namespace) -> int:
    """Fetch into the cache and print the resulting path."""
    from gptsmith.data.download import download_corpus, download_gpt2_bpe

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.what == "gpt2-bpe":
        given = os.environ.get("GPTSMITH_GPT2_BPE")
        if given and not args.force:
            from gptsmith.data.tokenizer import GPT2Tokenizer

            GPT2Tokenizer.from_files(given)  # a broken path is an error here, not a silent fetch
            report(f"GPTSMITH_GPT2_BPE already gives GPT-2's BPE files ({given}); nothing to fetch")
            print(given)
            return 0
        path = download_gpt2_bpe(force=args.force, report=report)
        if given:
            report("note: GPTSMITH_GPT2_BPE is set, so it still takes precedence over the cache")
    else:
        from gptsmith.data.corpus import named_corpus_dirs
        from gptsmith.data.download import cache_dir

        # Where `--data NAME` would find it first (named_corpus_dirs), outside the cache.
        candidates = [directory / f"{args.what}.txt" for directory in named_corpus_dirs()]
        found = next((path for path in candidates if path.is_file()), None)
        if found is not None and not args.force and found.parent != cache_dir() / "data":
            report(f"{args.what} is already here ({found}): nothing to fetch (--force fetches a copy into "
                   "the cache)")
            print(found)
            return 0
        path = download_corpus(args.what, force=args.force, report=report)
    print(path)
    return 0
