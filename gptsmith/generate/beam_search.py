"""Beam search: keep the ``num_beams`` most likely continuations instead of only the single best token.

Greedy decoding commits to the most likely next token at every step, and can miss a sequence
whose first token is less likely but whose continuation is much more likely. Beam search keeps
``num_beams`` partial sequences (beams); each step it extends every beam by every token, scores
each candidate by its total log-probability, and keeps the best ``num_beams``. A beam that reaches
``eos_id`` (or a stop sequence, see ``stopping.py``) is set aside as a finished hypothesis, scored by
``sum of log-probabilities / n_new_tokens ** length_penalty`` (length_penalty > 0 favours longer
answers, < 0 shorter ones). The search stops early once ``num_beams`` hypotheses are finished and
no running beam scores better than the worst of them (the rule Hugging Face uses by default).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from gptsmith.generate.decoding import DecodeState, TokenPicker
from gptsmith.generate.stopping import StopRules

if TYPE_CHECKING:
    from gptsmith.generate.config import GenerationConfig


def beam_search(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    max_new_tokens: int,
    *,
    num_beams: int,
    length_penalty: float = 1.0,
    stops: StopRules | None = None,
    repetition_penalty: float = 1.0,
    use_cache: bool = True,
) -> tuple[list[int], float, str]:
    """The best continuation of one prompt (1, n_prompt), its length-normalised log-probability,
    and why it ended: ``"eos"``, ``"stop_sequence"`` or ``"max_new_tokens"``.

    ``stops`` (eos id, token-id and text stop sequences) ends a hypothesis exactly as it ends a
    greedy row: text stops are matched on each candidate's decoded bytes, however it is tokenized.
    The returned ids exclude the eos token or stop sequence that ended the hypothesis (for a text
    stop, from the token where it begins).
    """
    if max_new_tokens == 0:
        return [], 0.0, "max_new_tokens"
    rules = stops or StopRules()
    n_prompt = prompt.shape[1]
    vocab_size = model.cfg.vocab_size
    beams = prompt.expand(num_beams, n_prompt)  # every beam starts as the prompt
    # One matcher per beam. Never changed in place (a chosen beam gets a fork), so sharing is safe.
    matchers = [rules.start(int(prompt[0, -1]))] * num_beams if rules.active else []
    finished: list[tuple[float, list[int], str]] = []
    with torch.inference_mode():
        state = DecodeState(model, beams, None, max_new_tokens, use_cache=use_cache)
        picker = TokenPicker(beams, None, vocab_size, repetition_penalty=repetition_penalty)
        scores = torch.full((num_beams,), -math.inf, device=prompt.device)
        scores[0] = 0.0  # identical beams at the start: extend only the first
        for step in range(max_new_tokens):
            n_new = step + 1
            logprobs = torch.log_softmax(picker.process(state.next_logits()), dim=-1)  # (num_beams, vocab)
            candidates = (scores[:, None] + logprobs).view(-1)
            top_scores, top_idx = candidates.topk(min(2 * num_beams, candidates.numel()))
            generated = state.tokens()[:, n_prompt:].tolist()
            rows, tokens, new_scores = [], [], []
            for rank, (score, index) in enumerate(zip(top_scores.tolist(), top_idx.tolist(), strict=True)):
                if score == -math.inf:
                    break
                row, token = divmod(index, vocab_size)
                stop = matchers[row].check(token) if matchers else None
                if stop is not None:
                    if rank < num_beams:  # only a candidate that would have made the cut finishes
                        kept = generated[row][: stop.kept]
                        finished.append((score / n_new**length_penalty, kept, stop.reason))
                    continue
                rows.append(row)
                tokens.append(token)
                new_scores.append(score)
                if len(rows) == num_beams:
                    break
            if not rows:
                break
            while len(rows) < num_beams:  # too few live candidates: fill with dead copies
                rows.append(rows[0])
                tokens.append(tokens[0])
                new_scores.append(-math.inf)
            row_index = torch.tensor(rows, device=prompt.device)
            next_ids = torch.tensor(tokens, device=prompt.device)
            state.reorder(row_index)
            if matchers:  # each chosen beam's matcher follows it, with the token it was extended by
                matchers = [matchers[row].fork(token) for row, token in zip(rows, tokens, strict=True)]
            if picker.seen is not None:
                picker.seen = picker.seen[row_index]
            picker.mark_seen(next_ids)
            state.append(next_ids)
            scores = torch.tensor(new_scores, device=prompt.device)
            if len(finished) >= num_beams:
                worst_kept = sorted(s for s, _, _ in finished)[-num_beams]
                if float(scores.max()) / n_new**length_penalty <= worst_kept:
                    break
        # Beams still running at the end compete with the finished hypotheses.
        generated = state.tokens()[:, n_prompt:].tolist()
        for score, sequence in zip(scores.tolist(), generated, strict=True):
            if score > -math.inf:
                finished.append((score / max(1, len(sequence)) ** length_penalty, sequence, "max_new_tokens"))
    best_score, best, reason = max(finished, key=lambda item: item[0])
    return best, best_score, reason


def beam_search_batch(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    cfg: GenerationConfig,
    stops: StopRules,
    pad_id: int,
) -> torch.Tensor:
    """Beam search for each row of a (possibly left-padded) batch; returns prompt + new ids (batch, n)."""
    results = []
    for row in range(ids.shape[0]):
        prompt = ids[row] if mask is None else ids[row][mask[row].bool()]
        best, _, _ = beam_search(
            model,
            prompt.unsqueeze(0),
            cfg.max_new_tokens,
            num_beams=cfg.num_beams,
            length_penalty=cfg.length_penalty,
            stops=stops,
            repetition_penalty=cfg.repetition_penalty,
            use_cache=cfg.use_cache,
        )
        results.append(best)
    width = max(len(r) for r in results)
    new_ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in results], dtype=torch.long)
    return torch.cat([ids, new_ids.to(ids.device).view(ids.shape[0], width)], dim=1)
