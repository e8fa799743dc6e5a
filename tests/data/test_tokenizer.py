"""Tokenizers: known ids, round trips, the offline BPE file chain and its clear errors."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from gptsmith.data import download
from gptsmith.data.download import resolve_gpt2_bpe
from gptsmith.data.tokenizer import (
    GPT2Tokenizer,
    SimpleTokenizerV1,
    SimpleTokenizerV2,
    Tokenizer,
    get_tokenizer,
    load_tokenizer,
    save_tokenizer,
)
from gptsmith.errors import ConfigError, DataError

HELLO = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
HELLO_IDS = [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114, 286, 617,
             34680, 27271, 13]


@pytest.fixture
def no_bpe_anywhere(tmp_path, monkeypatch):
    """An environment where no GPT-2 BPE file can be found and nothing touches the network."""
    monkeypatch.delenv("GPTSMITH_GPT2_BPE", raising=False)
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    monkeypatch.setenv("GPTSMITH_OFFLINE", "1")
    return tmp_path


# --- simple tokenizers ---------------------------------------------------------------------------

def test_simple_v1_round_trip_and_sorted_vocabulary():
    text = 'The cat sat on the mat. "Is it?" she asked: yes -- it is!'
    tokenizer = SimpleTokenizerV1.from_text(text)
    ids = tokenizer.encode("The cat sat on the mat.")
    assert tokenizer.decode(ids) == "The cat sat on the mat."
    assert list(tokenizer.str_to_int) == sorted(tokenizer.str_to_int)  # deterministic ids
    assert "--" in tokenizer.str_to_int and "?" in tokenizer.str_to_int


@pytest.mark.parametrize("text", [
    'He said "yes" (quietly), then: "no!"',
    "It's Jack's -- no, it's Gisburn's--portrait; _really_?",
    "(See below.) Done; \"fine\": _yes_.",
])
def test_simple_decode_puts_quotes_and_parentheses_back(text):
    tokenizer = SimpleTokenizerV1.from_text(text)
    expected = text.replace(" -- ", "--")  # the lost spaces around a double dash stay lost
    assert tokenizer.decode(tokenizer.encode(text)) == expected


def test_simple_v1_unknown_word_is_a_clear_error():
    tokenizer = SimpleTokenizerV1.from_text("the cat sat")
    with pytest.raises(DataError, match="'dog'.*SimpleTokenizerV2"):
        tokenizer.encode("the dog sat")


def test_simple_v2_maps_unknown_words_and_keeps_endoftext():
    tokenizer = SimpleTokenizerV2.from_text("the cat sat on the mat")
    ids = tokenizer.encode("the dog sat <|endoftext|> the cat")
    assert ids[1] == tokenizer.unk_id and ids[3] == tokenizer.eot_id
    assert tokenizer.decode(ids) == "the <|unk|> sat <|endoftext|> the cat"
    assert tokenizer.vocab_size == 7 and tokenizer.eot_id == 5 and tokenizer.unk_id == 6
    assert isinstance(tokenizer, Tokenizer)
    with pytest.raises(DataError, match="token id 99"):
        tokenizer.decode([99])


def test_simple_v2_vocabulary_has_the_words_glued_to_endoftext():
    # A .jsonl record may hold <|endoftext|> with no space around it: the vocabulary is cut as
    # encode() cuts, so the words beside it are words of the vocabulary, never <|unk|>.
    text = "The end.<|endoftext|>Next story"
    tok = SimpleTokenizerV2.from_documents([text])
    assert "Next" in tok.str_to_int and "<|endoftext|>Next" not in tok.str_to_int
    assert tok.unk_id not in tok.encode(text) and tok.decode(tok.encode(text)).endswith("Next story")


def test_simple_v2_special_text_that_is_not_allowed_is_unknown():
    tok = SimpleTokenizerV2.from_text("the cat")
    the, cat = tok.str_to_int["the"], tok.str_to_int["cat"]
    assert tok.encode("the <|endoftext|> cat") == [the, tok.eot_id, cat]
    assert tok.encode("the <|endoftext|> cat", allowed_special=()) == [the, tok.unk_id, cat]


def test_simple_vocabulary_saves_and_loads(tmp_path):
    tok = SimpleTokenizerV2.from_documents(["the cat sat.", "a dog ran!"])
    assert save_tokenizer(tok, tmp_path) == tmp_path / "vocab.json"
    again = load_tokenizer("simple", tmp_path)
    assert again.str_to_int == tok.str_to_int and again.fingerprint == tok.fingerprint
    assert again.encode("a cat ran.") == tok.encode("a cat ran.")
    assert SimpleTokenizerV2.from_text("the cat").fingerprint != tok.fingerprint
    (tmp_path / "vocab.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="vocab.json is not a gptsmith vocabulary"):
        load_tokenizer("simple", tmp_path)


def test_simple_tokenizers_match_the_book_on_the_verdict(shared_data):
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    v1 = SimpleTokenizerV1.from_text(text)
    assert v1.vocab_size == 1130
    sample = '"It\'s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
    ids = v1.encode(sample)
    assert ids == [1, 56, 2, 850, 988, 602, 533, 746, 5, 1126, 596, 5, 1, 67, 7, 38, 851, 1108, 754, 793, 7]
    # The book's decoder gives '" It\' s the last ...'; ours puts quotes and apostrophes back too.
    assert v1.decode(ids) == sample
    paragraphs = [" ".join(p.split()) for p in text.split("\n") if p.strip()]
    exact = sum(v1.decode(v1.encode(p)) == p for p in paragraphs)
    assert exact >= 70, f"only {exact} of {len(paragraphs)} paragraphs round-trip"  # 73 of 83
    v2 = SimpleTokenizerV2.from_text(text)
    assert v2.vocab_size == 1132
    joined = " <|endoftext|> ".join(["Hello, do you like tea?", "In the sunlit terraces of the palace."])
    assert v2.encode(joined) == [1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7]


def test_get_tokenizer_by_name():
    simple = get_tokenizer("simple", text="a b c")
    assert simple.name == "simple" and simple.encode("c a z") == [2, 0, 4]
    with pytest.raises(ConfigError, match="unknown tokenizer 'bpe3'.*gpt2"):
        get_tokenizer("bpe3")


# --- GPT-2 BPE -----------------------------------------------------------------------------------

def test_gpt2_known_ids(gpt2_tokenizer):
    assert gpt2_tokenizer.encode(HELLO, allowed_special={"<|endoftext|>"}) == HELLO_IDS
    assert gpt2_tokenizer.decode(HELLO_IDS) == HELLO
    assert (gpt2_tokenizer.vocab_size, gpt2_tokenizer.eot_id, gpt2_tokenizer.name) == (50257, 50256, "gpt2")
    assert isinstance(gpt2_tokenizer, Tokenizer)
    # Not allowed -> the special token is plain text, never a silent 50256.
    assert 50256 not in gpt2_tokenizer.encode(HELLO, allowed_special=())


def test_gpt2_both_file_formats_agree_on_the_verdict(gpt2_bpe_dir, shared_data):
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    from_tiktoken = GPT2Tokenizer.from_files(gpt2_bpe_dir / "gpt2.tiktoken").encode(text)
    from_openai = GPT2Tokenizer.from_files(gpt2_bpe_dir / "vocab.bpe").encode(text)
    assert len(from_tiktoken) == 5145
    assert from_tiktoken == from_openai
    assert from_tiktoken[:10] == [40, 367, 2885, 1464, 1807, 3619, 402, 271, 10899, 2138]
    assert GPT2Tokenizer.from_files(gpt2_bpe_dir / "gpt2.tiktoken").decode(from_tiktoken) == text


def test_gpt2_decode_bytes_and_bad_ids(gpt2_tokenizer):
    ids = gpt2_tokenizer.encode("naïve café ☕")
    assert b"".join(gpt2_tokenizer.decode_bytes([i]) for i in ids).decode("utf-8") == "naïve café ☕"
    with pytest.raises(DataError, match="50257 is outside"):
        gpt2_tokenizer.decode([50257])
    with pytest.raises(DataError, match="-1 is outside"):
        gpt2_tokenizer.decode_bytes([-1])


def test_encode_batch_matches_encode(gpt2_tokenizer):
    texts = ["one <|endoftext|> two", "three four", ""]
    assert gpt2_tokenizer.encode_batch(texts, num_threads=2) == [gpt2_tokenizer.encode(t) for t in texts]


# --- finding the BPE files ------------------------------------------------------------------------

def test_missing_everything_says_what_to_run(no_bpe_anywhere):
    with pytest.raises(DataError, match="gptsmith download gpt2-bpe"):
        get_tokenizer("gpt2")


def test_env_path_that_does_not_exist(no_bpe_anywhere, monkeypatch):
    monkeypatch.setenv("GPTSMITH_GPT2_BPE", str(no_bpe_anywhere / "nowhere"))
    with pytest.raises(DataError, match="GPT-2 BPE path not found: .*nowhere"):
        get_tokenizer("gpt2")


def test_directory_without_bpe_files(no_bpe_anywhere):
    with pytest.raises(DataError, match="no GPT-2 BPE files in"):
        resolve_gpt2_bpe(no_bpe_anywhere)


def test_wrong_ranks_file_is_rejected(no_bpe_anywhere):
    bad = no_bpe_anywhere / "tiny.tiktoken"
    bad.write_text("YQ== 0\nYg== 1\n")
    with pytest.raises(DataError, match="2 ranks, not GPT-2's 50256"):
        GPT2Tokenizer.from_files(bad)
    bad.write_text("not a ranks file\n")
    damaged = r"cannot read GPT-2 BPE files .* \(the file is damaged: delete it and run `gptsmith download"
    with pytest.raises(DataError, match=damaged):
        GPT2Tokenizer.from_files(bad)


def test_user_cache_and_tiktoken_cache_are_found(no_bpe_anywhere, gpt2_bpe_dir, monkeypatch):
    monkeypatch.delenv("GPTSMITH_GPT2_BPE", raising=False)  # the gpt2_bpe_dir fixture does not set it
    ranks = (gpt2_bpe_dir / "gpt2.tiktoken").read_bytes()
    cached = download.gpt2_bpe_cache_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(ranks)
    assert resolve_gpt2_bpe() == ("tiktoken", (cached,))
    tiktoken_file = download.tiktoken_cache_file(download.GPT2_TIKTOKEN_URL)
    tiktoken_file.parent.mkdir(parents=True)
    tiktoken_file.write_bytes(ranks)
    assert resolve_gpt2_bpe() == ("tiktoken", (tiktoken_file,))  # tiktoken's own cache comes first
    assert get_tokenizer("gpt2").encode(HELLO) == HELLO_IDS


def _fake_whisper_sdist(ranks: bytes):
    """A stand-in for `pip download` that drops an sdist holding ``ranks`` into --dest."""

    def fake_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and download.WHISPER_SDIST in cmd
        dest = Path(cmd[cmd.index("--dest") + 1])
        with tarfile.open(dest / "openai_whisper-20250625.tar.gz", "w:gz") as archive:
            info = tarfile.TarInfo("openai_whisper-20250625/whisper/assets/gpt2.tiktoken")
            info.size = len(ranks)
            archive.addfile(info, io.BytesIO(ranks))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return fake_run


def test_download_falls_back_to_the_pypi_sdist(no_bpe_anywhere, gpt2_bpe_dir, monkeypatch):
    ranks = (gpt2_bpe_dir / "gpt2.tiktoken").read_bytes()
    monkeypatch.delenv("GPTSMITH_OFFLINE")

    def no_network(url, timeout=20.0):
        raise OSError("offline")

    monkeypatch.setattr(download, "fetch_url", no_network)
    monkeypatch.setattr(download.subprocess, "run", _fake_whisper_sdist(ranks))
    lines: list[str] = []
    path = download.download_gpt2_bpe(report=lines.append)
    assert path == download.gpt2_bpe_cache_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == download.GPT2_TIKTOKEN_SHA256
    assert any("openai-whisper" in line for line in lines)
    assert download.download_gpt2_bpe(report=lines.append) == path and lines[-1].startswith("already cached")


def test_download_rejects_a_wrong_checksum(no_bpe_anywhere, monkeypatch):
    monkeypatch.delenv("GPTSMITH_OFFLINE")
    monkeypatch.setattr(download, "fetch_url", lambda url, timeout=20.0: b"tampered")
    monkeypatch.setattr(download.subprocess, "run", _fake_whisper_sdist(b"also tampered"))
    with pytest.raises(DataError, match="sha256 mismatch.*GPTSMITH_GPT2_BPE"):
        download.download_gpt2_bpe()
    assert not download.gpt2_bpe_cache_path().exists()
