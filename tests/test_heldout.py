"""Per-unit held-out scoring on the tiny model: units follow document boundaries, their sums make the
mean, KL drift from a top-k base reference is exact with the whole vocabulary and a lower bound below it, and
the next-token entropy per unit is the plain softmax entropy."""

import copy

import pytest
import torch
import torch.nn.functional as F

from learnforget import heldout, models
from learnforget.data.corpora import IGNORE
from learnforget.errors import UserError


@pytest.fixture(scope="module")
def tiny():
    model, tok = models.load("tiny-random-llama")
    return model, tok


def _rows(tok, n_rows=3, seq=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, min(tok.vocab_size, 1000), (n_rows, seq), generator=g)
    ids[0, 10] = ids[1, 5] = ids[1, 20] = tok.eos_token_id  # row 0: 2 documents, row 1: 3, row 2: 1
    return ids, ids.clone()


def test_units_split_rows_at_eos(tiny):
    _, tok = tiny
    ids, labels = _rows(tok)
    unit, n = heldout.units_of(ids, labels, tok.eos_token_id)
    assert n == 6
    assert torch.bincount(unit).tolist() == [10, 21, 5, 15, 11, 31]  # targets of positions 1..31 per row
    labels[2, :] = IGNORE  # a row without scored tokens contributes no unit
    assert heldout.units_of(ids, labels, tok.eos_token_id)[1] == 5


def test_unit_sums_make_the_mean_and_match_plain_cross_entropy(tiny):
    model, tok = tiny
    ids, labels = _rows(tok)
    out = heldout.score(model, ids, labels, tok.eos_token_id, batch_size=2)
    u = out["units"]
    assert sum(u["tokens"]) == out["tokens"] == 3 * 31
    assert abs(sum(u["loss"]) / sum(u["tokens"]) - out["loss"]) < 1e-9
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    plain = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1))
    assert abs(out["loss"] - float(plain)) < 1e-4
    logp = F.log_softmax(logits.float(), -1)
    entropy = -(logp.exp() * logp).sum(-1)  # (rows, positions)
    assert abs(out["entropy"] - float(entropy.mean())) < 1e-4 and abs(sum(u["entropy"]) / out["tokens"] - out["entropy"]) < 1e-9
    assert u["entropy"][0] == pytest.approx(float(entropy[0, :10].sum()), abs=1e-3)  # unit 0: row 0's first document


def _exact_kl(base, tuned, ids):
    with torch.no_grad():
        p = F.log_softmax(base(input_ids=ids).logits[:, :-1].float(), -1)
        q = F.log_softmax(tuned(input_ids=ids).logits[:, :-1].float(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_kl_from_a_topk_reference(tiny):
    base, tok = tiny
    ids, labels = _rows(tok, seed=1)
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    exact = _exact_kl(base, tuned, ids)
    vocab = base.config.vocab_size
    ref_all = heldout.score(base, ids, labels, tok.eos_token_id, top_k=vocab)["reference"]
    assert abs(heldout.score(tuned, ids, labels, tok.eos_token_id, reference=ref_all)["kl"] - exact) < 1e-4
    ref_k = heldout.score(base, ids, labels, tok.eos_token_id, top_k=8)["reference"]
    approx = heldout.score(tuned, ids, labels, tok.eos_token_id, reference=ref_k)
    assert 0 < approx["kl"] <= exact + 1e-6  # one bucket for the rest: a lower bound
    assert abs(sum(approx["units"]["kl"]) / approx["tokens"] - approx["kl"]) < 1e-9
    same = heldout.score(base, ids, labels, tok.eos_token_id, reference=ref_k)
    assert same["kl"] < 1e-5  # the base against itself


def test_reference_is_checked_and_saved_atomically(tiny, tmp_path):
    base, tok = tiny
    ids, labels = _rows(tok, seed=2)
    ref = heldout.score(base, ids, labels, tok.eos_token_id, top_k=4)["reference"]
    path = tmp_path / "ref.safetensors"
    heldout.save_reference(ref, path)
    back = heldout.load_reference(path)
    assert back["hash"] == ref["hash"] and torch.equal(back["idx"], ref["idx"])
    other, _ = _rows(tok, seed=3)
    with pytest.raises(UserError, match="other held-out rows"):
        heldout.score(base, other, other.clone(), tok.eos_token_id, reference=back)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(UserError, match="not a readable KL reference"):
        heldout.load_reference(path)
