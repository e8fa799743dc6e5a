"""Stage 1, text -> token ids -> training windows.

- ``token_ids``: ``token_id_list``, the one check that token ids are integers;
- ``tokenizer``: GPT-2's BPE (through tiktoken, from files found or fetched by ``download``) and
  ``get_tokenizer(name)``; the ``Tokenizer`` protocol is in ``tokenizer_protocol``, the book's
  simple word tokenizers in ``word_tokenizers`` (both also importable from ``tokenizer``).
- ``download``: finding and fetching GPT-2's BPE files and the named corpora, offline-first.
- ``text_files``: reading text out of files (strict UTF-8, lines, documents split at
  ``<|endoftext|>``, .jsonl/.parquet records), shared with the fine-tuning data readers;
- ``corpus``: what a ``--data`` argument names (a file, a folder, a built-in corpus, ``hf:`` data
  sets, read by ``hf_corpus``) as a stream of documents.
- ``shards``: a corpus tokenized once into a memory-mapped ``tokens.bin`` with its metadata.
- ``windows``: train/val/test splits of a shard and the sliding-window datasets and loaders
  that cut it into (inputs, targets) pairs.

May import: the top-level helpers (``errors``, ``config``, ``storage``, ``device``, ``version``).
"""
