"""Batched generation: same greedy tokens as unbatched and as model.generate; stops at stop strings."""

import pytest
import torch

from learnforget import models
from learnforget.evaluate import generation

PROMPTS = ["def add(a, b):\n", "Question: 2+2?\nAnswer:", "x", "The quick brown fox jumps over the lazy dog and then"]


@pytest.fixture(scope="module")
def tiny():
    return models.load("tiny-random-llama")


def test_batched_matches_unbatched_and_hf_generate(tiny):
    model, tok = tiny
    batched = generation.generate(model, tok, PROMPTS, stop=[], max_new_tokens=24, batch_size=4)
    single = [generation.generate(model, tok, [p], stop=[], max_new_tokens=24, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    for p, text in zip(PROMPTS, single):
        ids = torch.tensor([tok.encode(p)])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == text


def test_stops_at_stop_string(tiny):
    model, tok = tiny
    free = generation.generate(model, tok, PROMPTS, stop=[], max_new_tokens=30, batch_size=4)
    # Pick, for each prompt, a piece of its own free-running output as the stop string.
    stops = [t[10:13] for t in free]
    for p, t, s in zip(PROMPTS, free, stops):
        got = generation.generate(model, tok, [p, PROMPTS[0]], stop=[s], max_new_tokens=30, batch_size=2)[0]
        assert got == t[:t.index(s)] and s not in got


def test_truncate_at_stop_takes_earliest():
    assert generation.truncate_at_stop("a\nb Question: c\n\nd", ["\n\n", "Question:"]) == "a\nb "
    assert generation.truncate_at_stop("abc", []) == "abc"


def test_sampling_is_seeded_and_samples(tiny):
    """Same seed, same completions; but at temperature > 0 it really samples: other seeds give other
    completions, and they differ from greedy (a generator that ignored temperature would fail both)."""
    model, tok = tiny
    run = lambda **kw: generation.generate(model, tok, PROMPTS, stop=[], max_new_tokens=12, batch_size=4, **kw)
    a, b = run(temperature=1.0, seed=3), run(temperature=1.0, seed=3)
    assert a == b
    greedy = run()
    others = [run(temperature=1.0, seed=s) for s in (4, 5)]
    assert all(o != a for o in others)  # a random model's next-token distribution is wide: 12 tokens x 4 prompts never coincide
    assert a != greedy and all(o != greedy for o in others)
    assert run(temperature=1.0, seed=3, top_p=1e-9) == greedy  # a nucleus of one token is greedy again
