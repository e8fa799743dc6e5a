"""``prepare_splits`` (gptsmith/train/run.py): a corpus to train/validation tokens through the shard cache."""

from __future__ import annotations

import pytest

from gptsmith.data.tokenizer import SimpleTokenizerV2
from gptsmith.train.run import prepare_splits


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "user-cache"))
    monkeypatch.setenv("GPTSMITH_OFFLINE", "1")


def test_a_cache_dir_holds_the_shards_of_several_corpora(tmp_path):
    """cache_dir was used as the shard's own folder: a second corpus there was refused ("holds a token
    shard of ... (replace it with --force, or choose another --out)": flags a Python caller lacks)."""
    texts = {"a.txt": "alpha beta gamma. " * 40, "b.txt": "delta epsilon zeta. " * 40}
    tok = SimpleTokenizerV2.from_documents(texts.values())
    cache = tmp_path / "shards"
    infos = {}
    for name, text in texts.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        train, val, infos[name] = prepare_splits(str(tmp_path / name), tok, cache_dir=str(cache))
        assert len(train) + len(val) == infos[name]["n_tokens"] == len(tok.encode(text))
    assert infos["a.txt"]["checksum"] != infos["b.txt"]["checksum"]
    assert len(list(cache.iterdir())) == 2 and not (tmp_path / "user-cache").exists()
    # Each corpus finds its own shard again, reused: no progress is reported, as nothing is tokenized.
    calls = []
    _, _, again = prepare_splits(str(tmp_path / "a.txt"), tok, cache_dir=str(cache),
                                 progress=lambda done, total: calls.append(done))
    assert again == infos["a.txt"] and calls == []
