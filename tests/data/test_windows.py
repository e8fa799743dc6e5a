"""Sliding windows, memmap datasets, data loaders and input embeddings."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch

from gptsmith.data.shards import prepare_corpus
from gptsmith.data.windows import SlidingWindowDataset, create_dataloader, input_embeddings, split_tokens
from gptsmith.errors import ConfigError, DataError


def test_sliding_windows_are_shifted_views():
    dataset = SlidingWindowDataset(np.arange(20, dtype=np.uint16), max_length=4, stride=3)
    assert len(dataset) == 6  # starts 0, 3, ..., 15 (15 + 4 + 1 = 20 tokens)
    inputs, targets = dataset[1]
    assert inputs.tolist() == [3, 4, 5, 6] and targets.tolist() == [4, 5, 6, 7] and inputs.dtype == torch.long
    assert dataset[-1][1].tolist() == [16, 17, 18, 19]
    with pytest.raises(IndexError):
        dataset[6]


@pytest.mark.parametrize("max_length, stride, match", [
    (0, 1, "max_length must be a whole number >= 1, got 0"),
    (4, 0, "stride must be a whole number >= 1, got 0"),
    (4, -2, "stride must be a whole number >= 1, got -2"),
])
def test_window_parameters_are_validated(max_length, stride, match):
    with pytest.raises(ConfigError, match=match):
        SlidingWindowDataset(np.arange(100), max_length, stride)


def test_corpus_shorter_than_a_window_names_both_numbers():
    with pytest.raises(DataError, match=r"corpus has 10 tokens, fewer than max_length \+ 1 = 11"):
        SlidingWindowDataset(np.arange(10), max_length=10, stride=1)


def test_memmap_dataset_pickles_without_copying_the_tokens(tmp_path, word_tokenizer):
    (tmp_path / "c.txt").write_text(" ".join(["alpha beta gamma"] * 2000))
    shard = prepare_corpus(tmp_path / "c.txt", tokenizer=word_tokenizer, out_dir=tmp_path / "s")
    dataset = SlidingWindowDataset(shard.tokens, max_length=8, stride=1)
    blob = pickle.dumps(dataset)
    assert len(blob) < 2000  # the 6000 tokens are not in the pickle
    clone = pickle.loads(blob)
    assert isinstance(clone.tokens, np.memmap) and clone[5][0].tolist() == dataset[5][0].tolist()


def test_a_split_of_a_memmap_pickles_to_the_same_windows(tmp_path, word_tokenizer):
    # A slice of a memmap keeps its parent's offset attribute: a worker process (spawned, as on
    # macOS/Windows) must still read the split's own tokens, not the start of the file.
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    (tmp_path / "c.txt").write_text(" ".join(words[i % 7] for i in range(3000)))
    shard = prepare_corpus(tmp_path / "c.txt", tokenizer=word_tokenizer, out_dir=tmp_path / "s")
    val = split_tokens(shard)["val"]
    dataset = SlidingWindowDataset(val, max_length=8, stride=1)
    clone = pickle.loads(pickle.dumps(dataset))
    assert isinstance(clone.tokens, np.memmap)
    for i in (0, 3, len(dataset) - 1):
        assert clone[i][0].tolist() == dataset[i][0].tolist() == val[i : i + 8].tolist()
    assert dataset[0][0].tolist() != SlidingWindowDataset(shard.tokens, 8, 1)[0][0].tolist()


def test_windows_are_never_materialised(tmp_path):
    import tracemalloc

    path = tmp_path / "tokens.bin"
    np.arange(1_000_000, dtype=np.uint32).astype(np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    tracemalloc.start()
    try:
        dataset = SlidingWindowDataset(tokens, max_length=256, stride=1)
        batch = dataset.batch(np.arange(0, 999_000, 100_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(dataset) == 1_000_000 - 256
    assert batch[0].shape == (10, 256) and batch[1][3, 0].item() == (300_000 + 1) % 65536
    # Storing the windows would take len * 256 * 2 bytes (~0.5 GB); the dataset takes a few KB.
    assert peak < 1_000_000


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_windows_at_stride_one_cost_no_resident_memory(tmp_path):
    # tracemalloc does not see torch's allocator; the resident set size sees everything.
    path = tmp_path / "tokens.bin"
    np.arange(1_000_000, dtype=np.uint32).astype(np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    before = _rss_bytes()
    dataset = SlidingWindowDataset(tokens, max_length=256, stride=1)
    total = 0
    for index in range(0, len(dataset), 997):  # windows from the whole file
        inputs, targets = dataset[index]
        total += int(targets[-1])
    growth = _rss_bytes() - before
    assert total > 0
    # ~1M windows x 256 tokens would be 0.5 GB as uint16 (4 GB as int64); the file itself is 2 MB.
    assert growth < 64 * 2**20, f"resident memory grew by {growth / 2**20:.0f} MiB"


def test_window_sizes_accept_numpy_integers():
    dataset = SlidingWindowDataset(np.arange(100), np.int64(4), np.int32(2))
    assert len(dataset) == 48 and isinstance(dataset.max_length, int)


def test_dataloader_matches_the_book_on_the_verdict(gpt2_tokenizer, shared_data):
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    options = {"shuffle": False, "tokenizer": gpt2_tokenizer}
    loader = create_dataloader(text, batch_size=1, max_length=4, stride=1, **options)
    inputs, targets = next(iter(loader))
    assert inputs.tolist() == [[40, 367, 2885, 1464]] and targets.tolist() == [[367, 2885, 1464, 1807]]
    loader = create_dataloader(text, batch_size=8, max_length=4, stride=4, **options)
    inputs, _ = next(iter(loader))
    assert inputs.shape == (8, 4) and inputs[1].tolist() == [1807, 3619, 402, 271]


def test_dataloader_seed_shuffle_and_workers():
    tokens = np.arange(200, dtype=np.uint16)

    def first_batch(seed, workers=0):
        loader = create_dataloader(tokens, batch_size=4, max_length=8, stride=8, seed=seed,
                                   num_workers=workers)
        return next(iter(loader))[0]

    assert torch.equal(first_batch(1), first_batch(1)) and not torch.equal(first_batch(1), first_batch(2))
    assert first_batch(3, workers=1).shape == (4, 8)


def test_dataloader_with_too_few_windows_for_a_batch():
    with pytest.raises(DataError, match="only 2 window.*batch_size 4"):
        create_dataloader(np.arange(20), batch_size=4, max_length=8, stride=8)
    with pytest.raises(ConfigError, match="batch_size"):
        create_dataloader(np.arange(20), batch_size=0)


def test_input_embeddings_add_positions():
    tok_emb, pos_emb = torch.nn.Embedding(50, 16), torch.nn.Embedding(6, 16)
    batch = torch.randint(0, 50, (3, 6))
    out = input_embeddings(batch, tok_emb, pos_emb)
    assert out.shape == (3, 6, 16)
    torch.testing.assert_close(out[2, 4], tok_emb.weight[batch[2, 4]] + pos_emb.weight[4])
    with pytest.raises(DataError, match="7 tokens exceed the 6 positions"):
        input_embeddings(torch.zeros(1, 7, dtype=torch.long), tok_emb, pos_emb)


def test_a_tokenizer_can_be_named(tmp_path):
    from gptsmith.data.shards import corpus_tokenizer
    from gptsmith.data.tokenizer import get_tokenizer
    from gptsmith.train.run import prepare_splits

    text = "alpha beta gamma delta " * 40
    named = next(iter(create_dataloader(text, batch_size=2, max_length=8, stride=8, shuffle=False,
                                        tokenizer="simple")))
    given = next(iter(create_dataloader(text, batch_size=2, max_length=8, stride=8, shuffle=False,
                                        tokenizer=get_tokenizer("simple"))))
    assert all(torch.equal(a, b) for a, b in zip(named, given, strict=True))
    corpus = tmp_path / "c.txt"
    corpus.write_text(text, encoding="utf-8")
    # A word-level tokenizer by name knows the built-in corpus's words, not the corpus's: it was
    # used silently, and "delta" (say) became <|unk|>; the one learnt from the corpus is asked for.
    with pytest.raises(ConfigError, match=r"the tokenizer 'simple' by name knows only the built-in corpus's "
                       r"words: pass the one learnt from .*c.txt', corpus_tokenizer\('simple', '.*c.txt'\)"):
        prepare_splits(str(corpus), "simple", cache_dir=str(tmp_path / "cache"))
    learnt = corpus_tokenizer("simple", corpus)
    train_tokens, _, info = prepare_splits(str(corpus), learnt, cache_dir=str(tmp_path / "cache"))
    assert info["tokenizer"] == "simple" and len(train_tokens) > 0
    assert learnt.unk_id not in {int(i) for i in train_tokens}
    with pytest.raises(DataError, match="tokenizer must be a tokenizer .* or its name, got int"):
        create_dataloader(text, tokenizer=5)
