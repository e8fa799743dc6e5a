"""explain(): every stage's numbers are the model's own, every picture a real PNG, the page offline."""

from __future__ import annotations

import json
import math
import re
import struct

import pytest
import torch
from explain_helpers import TEXT, simple_tokenizer, tiny_model

from gptsmith.errors import GptsmithError
from gptsmith.explain.attention import recompute_attention, run_with_attention
from gptsmith.explain.embeddings import pca_2d, word_ids
from gptsmith.explain.report import explain

PICTURE_SIZES = {  # name -> (width, height) in pixels, for a 2-layer, 2-head model
    "embeddings": (700, 550),
    "attention_grid": (900, None),  # height follows the grid's shape
    "attention_layer1": (720, 680),
    "attention_focus": (800, 320),
    "temperature": (960, 400),
    "random_vs_trained": (900, 420),
}


@pytest.fixture(scope="module")
def tokenizer():
    return simple_tokenizer()


@pytest.fixture(scope="module")
def trained(tokenizer):
    """A tiny model trained for a few steps on TEXT (it learns the text, so its loss drops)."""
    return tiny_model(tokenizer.vocab_size, steps=20, text_ids=tokenizer.encode(TEXT))


@pytest.fixture(scope="module")
def report(trained, tokenizer):
    return explain(trained, tokenizer, TEXT, top_k=4, model_name="tiny")


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails unless ``data`` starts like a PNG file."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_every_picture_is_a_png_of_its_stated_size(report):
    pictures = report.pictures()
    assert [p.name for p in pictures] == list(PICTURE_SIZES)
    for picture in pictures:
        assert png_size(picture.png) == (picture.width, picture.height), picture.name
        width, height = PICTURE_SIZES[picture.name]
        assert picture.width == width and (height is None or picture.height == height), picture.name
        assert picture.png.endswith(b"IEND\xaeB`\x82")  # complete file


def test_tokens_are_the_tokenizers_and_the_simple_view_is_beside_them(report, tokenizer):
    assert report.tokens.ids == tokenizer.encode(TEXT)
    assert report.tokens.pieces[:3] == ["Every", "effort", "moves"]
    assert report.simple.pieces == [
        "Every",
        "effort",
        "moves",
        "you",
        ",",
        "and",
        "the",
        "next",
        "effort",
        "moves",
        "you",
        "further",
        ".",
    ]


def test_bpe_pieces_show_their_spaces_and_ids(trained, gpt2_tokenizer):
    model = tiny_model(gpt2_tokenizer.vocab_size)
    report = explain(model, gpt2_tokenizer, "Every effort moves you")
    assert report.tokens.ids == [6109, 3626, 6100, 345]  # GPT-2's ids for this text
    assert report.tokens.pieces == ["Every", "␣effort", "␣moves", "␣you"]
    assert report.simple.pieces == ["Every", "effort", "moves", "you"]


def test_control_characters_are_shown_as_their_bytes_never_passed_to_the_terminal(gpt2_tokenizer):
    model = tiny_model(gpt2_tokenizer.vocab_size)
    text = "red\x1b[31m\x00x\u0092y\tz"  # an escape sequence, a NUL, a C1 control (as in SMS spam), a tab
    report = explain(model, gpt2_tokenizer, text)
    shown = report.to_text() + report.to_html()
    assert not [c for c in ("\x1b", "\x00", "\u0092") if c in shown]
    assert "<1b>" in report.tokens.pieces and "<00>" in report.tokens.pieces and "⇥" in report.tokens.line()
    assert "<c2 92>" in "".join(report.simple.pieces)
    assert report.as_dict()["text"] == text  # the numbers keep the text exactly as given


def test_characters_the_font_lacks_are_one_warning_for_the_report(gpt2_tokenizer):
    import warnings

    model = tiny_model(gpt2_tokenizer.vocab_size)
    report = explain(model, gpt2_tokenizer, "日本語のテキスト 中文")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report.pictures()
        report.to_html()  # drawn once: no second warning
    messages = [str(w.message) for w in caught]
    assert len(messages) <= 1, messages  # matplotlib's own: 24, one per label laid out, per picture
    if messages:  # (none where a font with these characters is installed)
        assert messages[0].startswith("the pictures' font has no glyph for ") and "中" in messages[0]


@pytest.mark.filterwarnings("ignore:the pictures' font has no glyph")  # a random model's neighbours
def test_direction_marks_are_shown_as_their_bytes_not_left_to_reorder_the_pieces(gpt2_tokenizer):
    model = tiny_model(gpt2_tokenizer.vocab_size)
    text = "abc \u202edef\u2066 ghi \u200f"  # right-to-left override, isolate, mark: all invisible
    report = explain(model, gpt2_tokenizer, text)
    shown = report.to_text() + report.to_html()
    assert not [c for c in ("\u202e", "\u2066", "\u200f") if c in shown]  # were shown as they are
    assert "<e2 80 ae>" in "".join(report.simple.pieces) and "&lt;e2 80 ae&gt;" in report.to_html()
    assert report.as_dict()["text"] == text


def test_attention_rows_sum_to_one_and_are_zero_above_the_diagonal(report):
    weights = report.attention  # (layers, heads, n, n)
    n = len(report.tokens.ids)
    assert weights.shape == (2, 2, n, n)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 2, n))
    future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    assert torch.all(weights[..., future] == 0)
    assert torch.all(weights[..., ~future] > 0)


def test_recomputed_attention_reproduces_each_modules_real_output(trained, tokenizer):
    ids = torch.tensor([tokenizer.encode(TEXT)])
    logits, capture = run_with_attention(trained, ids)
    assert capture.max_error < 1e-5
    torch.testing.assert_close(logits, trained(ids))  # the hooks changed nothing
    # Independently: feed one block's real input through the module (fused SDPA path) and compare.
    block = trained.trf_blocks[1]
    x = block.norm1(torch.randn(1, ids.shape[1], 32))
    weights, output = recompute_attention(block.att, x)
    assert (output - block.att(x)).abs().max() < 1e-5
    _, reference = block.att(x, return_weights=True)  # the module's own step-by-step path
    torch.testing.assert_close(weights, reference)


def test_top_k_probabilities_equal_a_softmax_of_the_logits(report, trained, tokenizer):
    ids = torch.tensor([tokenizer.encode(TEXT)])
    probs = torch.softmax(trained(ids)[0], dim=-1)
    for position, row in enumerate(report.next_token.top_k):
        assert len(row) == 4
        expected, where = probs[position].topk(4)
        assert [c.token_id for c in row] == where.tolist()
        assert [c.probability for c in row] == pytest.approx(expected.tolist(), abs=1e-6)
    # Temperature: softmax(logits / T) of the last position.
    last = trained(ids)[0, -1]
    for t in (0.5, 1.0, 2.0):
        expected = torch.softmax(last / t, dim=-1)[report.next_token.last_ids]
        assert report.next_token.last_probabilities[str(t)] == pytest.approx(expected.tolist(), abs=1e-6)
    cold, hot = report.next_token.entropies["0.5"], report.next_token.entropies["2.0"]
    assert cold < report.next_token.entropies["1.0"] < hot


def test_loss_is_the_mean_token_cross_entropy_and_perplexity_its_exp(report, trained, tokenizer):
    ids = torch.tensor([tokenizer.encode(TEXT)])
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(trained(ids)[0, :-1], ids[0, 1:])
    assert report.next_token.loss == pytest.approx(float(expected), rel=1e-5)
    assert report.next_token.perplexity == pytest.approx(math.exp(float(expected)), rel=1e-5)


def test_random_model_scores_near_ln_vocab_and_the_trained_one_far_below(report, tokenizer):
    compare = report.compare
    assert compare.uniform_loss == pytest.approx(math.log(tokenizer.vocab_size))
    assert abs(compare.random_loss - math.log(tokenizer.vocab_size)) < 0.5
    assert compare.trained_loss == pytest.approx(report.next_token.loss)
    assert compare.trained_loss < compare.random_loss - 3  # 20 steps on this very text
    assert len(compare.random_losses) == len(compare.trained_losses) == len(report.tokens.ids) - 1


def test_html_is_one_self_contained_page(report):
    page = report.to_html()
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == len(report.pictures())
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert "1. Tokens" in page and "5. Random versus trained" in page


def test_json_holds_the_numbers_behind_every_picture(report):
    data = json.loads(report.to_json())
    n = len(report.tokens.ids)
    assert data["attention"]["shape"] == [2, 2, n, n]
    assert len(data["attention"]["layers_heads_query_key"][1][0][n - 1]) == n
    assert len(data["embeddings"]["pca_2d"]) == len(data["embeddings"]["labels"])
    assert len(data["next_token"]["top_k"]) == n
    assert len(data["random_vs_trained"]["random_losses"]) == n - 1
    assert data["attention"]["focus"]["position"] == n - 1


def test_json_is_strict_when_a_perplexity_overflows(tokenizer):
    model = tiny_model(tokenizer.vocab_size)
    with torch.no_grad():
        model.final_norm.scale.mul_(1e4)  # finite logits, but a loss far above 709: exp(loss) is inf
    report = explain(model, tokenizer, TEXT)
    assert report.next_token.perplexity == math.inf and "perplexity inf" in report.to_text()

    def refuse(constant):  # what JSON.parse and jq do with Python's Infinity
        raise ValueError(f"not JSON: {constant}")

    data = json.loads(report.to_json(), parse_constant=refuse)  # was: ..."perplexity": Infinity...
    assert data["next_token"]["perplexity"] is None
    assert data["random_vs_trained"]["trained_perplexity"] is None
    assert data["next_token"]["loss"] == pytest.approx(report.next_token.loss)


def test_text_summary_names_every_stage(report):
    text = report.to_text()
    for stage in ("1. Tokens", "2. Embeddings", "3. Attention", "4. Next token", "5. Random versus trained"):
        assert stage in text


def test_words_are_mapped_and_nearest_neighbours_found_by_cosine(tokenizer):
    model = tiny_model(tokenizer.vocab_size)
    king, queen = word_ids(tokenizer, "king")[0], word_ids(tokenizer, "queen")[0]
    with torch.no_grad():  # plant a neighbour: queen's vector is king's, scaled (cosine 1)
        model.tok_emb.weight[queen] = 3 * model.tok_emb.weight[king]
    report = explain(model, tokenizer, TEXT, words=["king", "queen", "man", "woman"])
    view = report.embeddings
    assert view.labels == ["king", "queen", "man", "woman"] and view.source == "words"
    assert view.neighbours_of == "king"
    assert view.neighbours[0].token_id == queen and view.neighbours[0].cosine == pytest.approx(1.0, abs=1e-4)
    assert king not in [n.token_id for n in view.neighbours]
    cosines = [n.cosine for n in view.neighbours]
    assert cosines == sorted(cosines, reverse=True)


def test_pca_finds_the_direction_of_most_variance():
    line = torch.outer(torch.arange(6.0), torch.tensor([1.0, 2.0, 2.0]))  # points on one line
    coords, shares = pca_2d(line)
    assert shares[0] == pytest.approx(1.0, abs=1e-6)
    assert coords[:, 1].abs().max() < 1e-5
    assert torch.allclose(coords[:, 0].abs(), (torch.arange(6.0) - 2.5).abs() * 3, atol=1e-4)


def test_focus_picks_the_most_attended_earlier_tokens(report):
    view = explain_focus = report.focus
    assert explain_focus.position == len(report.tokens.ids) - 1
    for layer, heads in enumerate(view.top):
        for head, top in enumerate(heads):
            row = report.attention[layer, head, view.position]
            assert top[0][0] == int(row.argmax()) and top[0][1] == pytest.approx(float(row.max()), abs=1e-4)


def test_bad_input_is_one_clear_error(trained, tokenizer):
    with pytest.raises(GptsmithError, match="text is empty"):
        explain(trained, tokenizer, "")
    with pytest.raises(GptsmithError, match=r"focus position 99 is not in the text: it has 13 tokens"):
        explain(trained, tokenizer, TEXT, focus=99)
    for focus in (True, 1.5, "2"):  # True was position 1; "2" a TypeError traceback
        with pytest.raises(GptsmithError, match="focus must be a token position"):
            explain(trained, tokenizer, TEXT, focus=focus)
    with pytest.raises(GptsmithError, match="top_k"):
        explain(trained, tokenizer, TEXT, top_k=0)
    with pytest.raises(GptsmithError, match="layer 5 does not exist"):
        explain(trained, tokenizer, TEXT, layer=5)
    with pytest.raises(GptsmithError, match=r"a list of words, not one string \(wrap it: \['king'\]\)"):
        explain(trained, tokenizer, TEXT, words="king")  # not the letters k, i, n, g
    with pytest.raises(GptsmithError, match="words must be strings, got int 1"):
        explain(trained, tokenizer, TEXT, words=["king", 1])
    with pytest.raises(GptsmithError, match="neighbours_of must be a word"):
        explain(trained, tokenizer, TEXT, neighbours_of=5)


def test_a_tokenizer_may_be_given_by_name():
    from gptsmith.data.tokenizer import get_tokenizer

    words = get_tokenizer("simple")
    model = tiny_model(words.vocab_size)
    by_name = explain(model, "simple", TEXT)  # was "simple".encode(TEXT): LookupError, unknown encoding
    assert by_name.tokens.ids == explain(model, words, TEXT).tokens.ids == words.encode(TEXT)


def test_a_text_longer_than_the_context_is_cropped_with_a_note(trained, tokenizer):
    long_text = " ".join([TEXT] * 3)  # 39 tokens, context 24
    report = explain(trained, tokenizer, long_text, focus=-1)
    assert len(report.tokens.ids) == 24 and report.focus.position == 23
    assert report.notes and "39 tokens; only the first 24" in report.notes[0]
    assert report.attention.shape[-1] == 24


def test_a_one_token_text_has_every_stage_but_no_loss(trained, tokenizer):
    report = explain(trained, tokenizer, "Every")
    assert report.tokens.pieces == ["Every"] and report.attention.shape == (2, 2, 1, 1)
    assert report.next_token.loss is None and report.compare.random_loss is None
    assert [p.name for p in report.pictures()] == list(PICTURE_SIZES)[:-1]  # no per-token loss to draw
    assert "nothing to score" in report.to_text() and "nothing to score" in report.to_html()


def test_a_model_whose_weights_give_nan_is_one_line_not_a_report_of_nan(tokenizer):
    model = tiny_model(tokenizer.vocab_size)
    with torch.no_grad():
        model.trf_blocks[0].norm1.scale[0] = float("nan")  # finite elsewhere; every output is NaN
    with pytest.raises(GptsmithError, match=r"^the model's next-token logits are not finite \(nan\): its "):
        explain(model, tokenizer, TEXT)


def test_best_learned_tokens_are_only_those_whose_loss_fell():
    from gptsmith.explain.compare import CompareView
    from gptsmith.explain.text import compare_text

    view = CompareView(uniform_loss=11.0, random_losses=[11.0, 11.0, 11.0], trained_losses=[3.0, 12.0, 10.0],
                       random_loss=11.0, trained_loss=8.3, seed=0)
    line = compare_text(view, ["a", "b", "c", "d"])[1]
    assert line == "   best learned tokens: b 11.0→3.0, d 11.0→10.0"  # c rose: not "learned"
    worse = CompareView(11.0, [3.0], [4.0], 3.0, 4.0, 0)
    assert compare_text(worse, ["a", "b"])[1] == "   no token is predicted better than at random"
