"""The continuous-batching engine (gptsmith/serve/engine.py): each request gets what ``generate``
gives it alone, while others join and leave the batch; a cancelled request frees its row at once."""

from __future__ import annotations

import random
import threading
import time

import torch
from generation_helpers import ByteTokenizer, tiny_model
from serving_helpers import SlowModel, wait_until

from gptsmith.generate.generation import generate, stream_text
from gptsmith.serve.engine import Engine, SamplingParams


class Collect:
    """An emit callback that keeps a request's chunks and signals when it has finished."""

    def __init__(self) -> None:
        self.chunks = []
        self.done = threading.Event()

    def __call__(self, chunk) -> None:
        self.chunks.append(chunk)
        if chunk.finish_reason is not None:
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)

    @property
    def last(self):
        return self.chunks[-1]


def _run_concurrently(engine: Engine, jobs: list[tuple[list[int], SamplingParams]]) -> list[Collect]:
    """Submit the jobs a moment apart (so they join a batch that is already running) and wait."""
    outputs = []
    for prompt, params in jobs:
        outputs.append(Collect())
        engine.submit(prompt, params, outputs[-1])
        time.sleep(0.002)
    for out in outputs:
        assert out.done.wait(60)
    return outputs


def test_requests_in_a_running_batch_get_what_generate_gives_them_alone():
    model, tok = tiny_model(vocab_size=257, context_length=64), ByteTokenizer()
    engine = Engine(model, tok, max_batch=4)  # 14 requests through 4 rows: they queue, join and leave
    rng = random.Random(0)
    jobs = []
    for i in range(14):
        prompt = [rng.randrange(256) for _ in range(rng.randint(1, 20))]
        sampled = i % 2 == 1
        params = SamplingParams(max_tokens=rng.randint(1, 40), temperature=0.9 if sampled else 0.0,
                                top_p=0.9 if i % 4 == 1 else None, seed=100 + i)
        jobs.append((prompt, params))
    engine.start()
    try:
        outputs = _run_concurrently(engine, jobs)
        assert engine.steps > 0 and engine.active == 0
    finally:
        engine.stop()
    for (prompt, params), out in zip(jobs, outputs, strict=True):
        ref = generate(model, prompt, params.max_tokens, temperature=params.temperature, top_p=params.top_p,
                       seed=params.seed, tokenizer=tok)[0, len(prompt):].tolist()
        ref = ref[: ref.index(tok.eot_id)] if tok.eot_id in ref else ref
        tokens = [c.token_id for c in out.chunks if c.token_id is not None]
        assert tokens[: len(ref)] == ref  # greedy and seeded sampling alike: the same tokens
        stopped = len(ref) < params.max_tokens
        assert tokens[len(ref):] == ([tok.eot_id] if stopped else [])
        assert out.last.finish_reason == ("stop" if stopped else "length")
        # usage counts every token generated, the end-of-text token too; the answer keeps the rest
        assert (out.last.completion_tokens, out.last.kept_tokens) == (len(tokens), len(ref))
        assert out.last.prompt_tokens == len(prompt)
        stream = stream_text(model, tok, prompt, params.max_tokens, temperature=params.temperature,
                             top_p=params.top_p, seed=params.seed)
        assert out.text == "".join(stream)


def test_stop_strings_end_each_answer_as_stream_text_does():
    model, tok = tiny_model(vocab_size=257, context_length=64), ByteTokenizer()
    rng = random.Random(3)
    jobs = []
    while len(jobs) < 6:
        prompt = [rng.randrange(32, 127) for _ in range(rng.randint(2, 12))]
        text = "".join(stream_text(model, tok, prompt, 30))
        letters = [ch for ch in text[2:] if ch.isascii() and ch.isalnum()]
        if letters:  # stop at a character the answer is known to reach
            jobs.append((prompt, SamplingParams(max_tokens=30, stop=(letters[0], "\n\n"))))
    engine = Engine(model, tok, max_batch=3)
    engine.start()
    try:
        outputs = _run_concurrently(engine, jobs)
    finally:
        engine.stop()
    for (prompt, params), out in zip(jobs, outputs, strict=True):
        stream = stream_text(model, tok, prompt, 30, stop_sequences=list(params.stop))
        assert out.text == "".join(stream) and out.last.finish_reason == "stop"
        assert params.stop[0] not in out.text
        generated = sum(c.token_id is not None for c in out.chunks)
        assert out.last.kept_tokens == len(stream.token_ids) < generated  # the stop's own tokens are cut
        assert out.last.completion_tokens == generated  # but were generated, and count (OpenAI bills them)


def test_logprobs_are_the_models():
    model, tok = tiny_model(vocab_size=257, context_length=64), ByteTokenizer()
    engine = Engine(model, tok, max_batch=2)
    engine.start()
    try:
        (out,) = _run_concurrently(engine, [([65, 66, 67], SamplingParams(max_tokens=3, logprobs=2))])
    finally:
        engine.stop()
    first = out.chunks[0]
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([[65, 66, 67]]))[0, -1], dim=-1)
    assert abs(first.logprob - float(expected[first.token_id])) < 1e-4
    assert list(first.top_logprobs) == expected.topk(2).indices.tolist()


def test_a_cancelled_request_frees_its_row_and_the_engine_keeps_serving():
    model, tok = SlowModel(tiny_model(vocab_size=257, context_length=256), delay=0.01), ByteTokenizer()
    engine = Engine(model, tok, max_batch=2)
    engine.start()
    try:
        long = Collect()
        handle = engine.submit([1, 2, 3], SamplingParams(max_tokens=250), long)
        assert wait_until(lambda: len(long.chunks) >= 2)
        handle.cancel()
        assert long.done.wait(5) and long.last.finish_reason == "cancelled"
        assert engine.active == 0 and len(long.chunks) < 100
        model.delay = 0.0
        (short,) = _run_concurrently(engine, [([4, 5], SamplingParams(max_tokens=5))])
        assert short.last.finish_reason in ("length", "stop")
    finally:
        engine.stop()


def test_stop_cancels_what_is_left():
    model, tok = SlowModel(tiny_model(vocab_size=257, context_length=256), delay=0.01), ByteTokenizer()
    engine = Engine(model, tok, max_batch=1)
    engine.start()
    running, waiting = Collect(), Collect()
    engine.submit([1], SamplingParams(max_tokens=250), running)
    engine.submit([2], SamplingParams(max_tokens=250), waiting)
    assert wait_until(lambda: len(running.chunks) >= 1)
    engine.stop()
    assert running.last.finish_reason == "cancelled" and waiting.last.finish_reason == "cancelled"


def test_a_failing_step_ends_the_requests_in_it_and_the_engine_keeps_serving():
    class Failing(SlowModel):
        fail = False

        def forward(self, *args, **kwargs):
            if self.fail:
                raise RuntimeError("out of memory (simulated)")
            return super().forward(*args, **kwargs)

    model, tok = Failing(tiny_model(vocab_size=257, context_length=64)), ByteTokenizer()
    engine = Engine(model, tok, max_batch=2)
    engine.start()
    try:
        model.fail = True
        (failed,) = _run_concurrently(engine, [([1, 2], SamplingParams(max_tokens=5))])
        assert failed.last.finish_reason == "error" and "simulated" in failed.last.error
        model.fail = False
        (ok,) = _run_concurrently(engine, [([1, 2], SamplingParams(max_tokens=5))])
        assert ok.last.finish_reason in ("length", "stop") and engine.active == 0
    finally:
        engine.stop()
