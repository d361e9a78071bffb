"""Shared-prefix scoring equals plain full-sequence scoring, whatever the batch size; lm-eval's tokenization and metrics."""

import pytest
import torch

from learnforget import models
from learnforget.evaluate import scoring as mc
from learnforget.evaluate.task import ChoiceItem, choice_item
from learnforget.evaluate.tasks.winogrande import item as winogrande_item


@pytest.fixture(scope="module")
def tiny():
    return models.load("tiny-random-llama")


def _items() -> list[ChoiceItem]:
    # Choices of very different lengths, 2 to 5 choices, and a context with a trailing space.
    return [
        choice_item("a", "Question: what is two plus two?\nAnswer:", ["4", "four, of course", "22", "a number much larger than that one"], 0),
        choice_item("b", "The cat sat on the", ["mat", "hat that was lying on the floor of the kitchen"], 1),
        choice_item("c", "Trailing space here ", ["x", "yy", "zzz", "wwww", "a much longer choice text"], 4),
        choice_item("d", "Q", ["one", "two"], 0),  # a one-token context: no shareable prefix
        winogrande_item(0, {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
                            "option1": "Sarah", "option2": "Maria", "answer": "2"}),
        winogrande_item(1, {"sentence": "The trophy did not fit in the suitcase because _ was too big.",
                            "option1": "the trophy", "option2": "the suitcase", "answer": "1"}),
    ] + [choice_item(f"n{i}", "Some context number " + str(i) * (i + 1), [" a" * (i + 1), "b", "c" * (3 * i + 1)], i % 3) for i in range(6)]


@pytest.mark.parametrize("batch_size", [1, 8])
def test_shared_prefix_matches_naive(tiny, batch_size):
    model, tok = tiny
    items = _items()
    got = mc.score(model, tok, items, batch_size=batch_size)
    ref = mc.score_naive(model, tok, items)
    for (lls, greedy), want, item in zip(got, ref, items):
        assert len(lls) == len(want) == len(item.requests) == len(greedy)
        assert lls == pytest.approx(want, abs=1e-4), item.id


def test_eager_attention_takes_the_additive_mask():
    # SDPA gets a boolean mask; eager attention adds the mask to its scores, so it must get the float one.
    model, tok = models.load("tiny-random-llama")
    model.config._attn_implementation = "eager"
    items = _items()
    got = mc.score(model, tok, items, batch_size=8)
    for (lls, _), want in zip(got, mc.score_naive(model, tok, items)):
        assert lls == pytest.approx(want, abs=1e-4)


def test_bfloat16_scores_near_float32(tiny):
    model, tok = tiny
    items = _items()
    ref = [lls for lls, _ in mc.score(model, tok, items, batch_size=8)]
    half = models.load("tiny-random-llama")[0].to(torch.bfloat16)
    got = [lls for lls, _ in mc.score(half, tok, items, batch_size=8)]
    diffs = [abs(a - b) for x, y in zip(got, ref) for a, b in zip(x, y)]
    assert 0 < max(diffs) < 0.05 * max(abs(a) for x in ref for a in x)  # bf16 rounding: close, not equal


def test_batch_size_invariance(tiny):
    model, tok = tiny
    items = _items()
    one = [lls for lls, _ in mc.score(model, tok, items, batch_size=1)]
    eight = [lls for lls, _ in mc.score(model, tok, items, batch_size=8)]
    for a, b in zip(one, eight):
        assert a == pytest.approx(b, abs=1e-4)


def test_encode_pair_moves_trailing_space_and_splits_whole(tiny):
    _, tok = tiny
    ctx, cont = mc.encode_pair(tok, "Answer: ", "yes")
    assert tok.decode(ctx) == "Answer:" and tok.decode(cont) == " yes"
    whole = tok.encode("Answer: yes")
    assert ctx + cont == whole


def test_winogrande_partial_scoring_scores_only_the_suffix(tiny):
    model, tok = tiny
    item = winogrande_item(0, {"sentence": "Ann gave Beth a book because _ was leaving.", "option1": "Ann", "option2": "Beth", "answer": "1"})
    assert item.requests == (("Ann gave Beth a book because Ann", " was leaving."), ("Ann gave Beth a book because Beth", " was leaving."))
    assert item.gold == 0
    # The score is the log-probability of the suffix tokens only, given each filled prefix.
    (lls, _), = mc.score(model, tok, [item])
    for (context, suffix), ll in zip(item.requests, lls):
        ids = tok.encode(context + suffix)
        n_ctx = len(tok.encode(context))
        with torch.inference_mode():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids[:-1]])).logits[0].double(), -1)
        want = sum(float(lp[t - 1, ids[t]]) for t in range(n_ctx, len(ids)))
        assert ll == pytest.approx(want, abs=1e-4)


def test_acc_norm_divides_by_characters():
    item = choice_item("x", "ctx", ["a", "bbbbbbbbbb"], 1)
    m = mc.item_metrics(item, [-2.0, -10.0])  # raw: choice 0; per character: -2.0 vs -1.0 -> choice 1
    assert (m["pred"], m["pred_norm"], m["acc"], m["acc_norm"]) == (0, 1, 0.0, 1.0)
    tie = mc.item_metrics(choice_item("t", "c", ["aa", "bb"], 1), [-1.0, -1.0])
    assert tie["pred"] == 0  # first maximum, as numpy.argmax


def test_mean_stderr_matches_lm_eval_formula():
    values = [1.0, 0.0, 1.0, 1.0]
    mu = 0.75
    want = (sum((v - mu) ** 2 for v in values) / 3) ** 0.5 / 2
    assert mc.mean_stderr(values) == pytest.approx(want)
    assert mc.mean_stderr([1.0]) is None
