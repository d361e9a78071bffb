"""What makes training faster and leaner changes no number: the chunked loss (token_losses' default) gives the
plain loss's value and gradients on the tiny model (full fine-tuning with a tied head, LoRA with a frozen
head, IFT labels, evaluation), and LoRA's MaskDropout drops at rate p and rescales like torch's dropout."""

import pytest
import torch

from learnforget import models
from learnforget.config import MethodConfig
from learnforget.data.corpora import IGNORE
from learnforget import heldout
from learnforget.loss import linear_cross_entropy, token_losses
from learnforget.train import methods
from learnforget.train.methods import MaskDropout


def batch(seed=0, rows=3, length=40, ift=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 259, (rows, length), generator=g)
    labels = ids.clone()
    if ift:  # prompts of different lengths are not supervised
        for r in range(rows):
            labels[r, : 5 + 7 * r] = IGNORE
    return ids, labels


def loss_and_grads(model, ids, labels, chunk):
    model.zero_grad(set_to_none=True)
    loss, n = token_losses(model, ids, labels, chunk=chunk)
    (loss / n).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    return float(loss), n, grads


def assert_same(model, ids, labels, chunk=7):
    plain = loss_and_grads(model, ids, labels, None)
    chunked = loss_and_grads(model, ids, labels, chunk)
    assert chunked[1] == plain[1]
    assert chunked[0] == pytest.approx(plain[0], rel=1e-5)
    assert chunked[2].keys() == plain[2].keys() and plain[2]
    for k, g in plain[2].items():
        assert torch.allclose(chunked[2][k], g, rtol=1e-4, atol=1e-5), k
    return plain[2]


@pytest.mark.parametrize("ift", [False, True])
def test_chunked_loss_matches_plain_full(ift):
    model, _ = models.load("tiny-random-llama")
    model.train()
    grads = assert_same(model, *batch(ift=ift))
    assert grads["model.embed_tokens.weight"].abs().sum() > 0  # the tied head/embedding gets both gradients


def test_chunked_loss_matches_plain_lora():
    model, _ = models.load("tiny-random-llama")
    model = methods.apply(model, MethodConfig(method="lora", rank=4, targets="all", dropout=0.0))
    with torch.no_grad():  # B = 0 at init: give the adapters a non-zero update so every gradient path is live
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    model.train()
    grads = assert_same(model, *batch(ift=True))
    assert all("lora_" in k for k in grads)


def test_linear_cross_entropy_matches_cross_entropy_on_ragged_chunks():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(23, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 50, (23,), generator=g)
    ref = torch.nn.functional.cross_entropy(h @ w.T, t, reduction="sum")
    ref_h, ref_w = torch.autograd.grad(2.5 * ref, (h, w))
    out = linear_cross_entropy(h, w, t, chunk=5)
    got_h, got_w = torch.autograd.grad(2.5 * out, (h, w))
    assert float(out) == pytest.approx(float(ref), rel=1e-6)
    assert torch.allclose(got_h, ref_h, atol=1e-6) and torch.allclose(got_w, ref_w, atol=1e-6)


def test_heldout_loss_equals_the_training_loss():
    model, tok = models.load("tiny-random-llama")
    ids, labels = batch(rows=5, ift=True)
    chunked = heldout.score(model, ids, labels, tok.eos_token_id, batch_size=2)
    with torch.inference_mode():
        total = sum(float(token_losses(model, ids[i:i + 2], labels[i:i + 2], chunk=None)[0]) for i in range(0, 5, 2))
    assert chunked["tokens"] == int((labels[:, 1:] != IGNORE).sum())
    assert chunked["loss"] == pytest.approx(total / chunked["tokens"], rel=1e-5)


def test_mask_dropout_drops_at_rate_p_and_rescales():
    p = 0.05
    q = round(p * 2**15) / 2**15
    x = torch.randn(301, 7, requires_grad=True)  # odd element count: the mask's last half-word is cut
    g = torch.randn(301, 7)
    torch.manual_seed(3)
    y = MaskDropout(p).train()(x)
    y.backward(g)
    keep = y.detach() != 0
    assert torch.allclose(y[keep], x[keep] / (1 - q)) and torch.allclose(x.grad, g * keep / (1 - q))
    torch.manual_seed(3)
    assert torch.equal(MaskDropout(p).train()(x), y)  # same seed, same mask
    assert torch.equal(MaskDropout(p).eval()(x), x)
    # the drop rate is q, on both halves of the mask (low and high bits of the draws), within 5 sigma
    n = 4_000_000
    keep, q2 = methods.keep_mask(torch.Size([n]), p)
    assert q2 == q and abs(q - p) < 2**-16
    sigma = (q * (1 - q) / (n // 2)) ** 0.5
    for part in (keep[: n // 2], keep[n // 2:]):
        assert abs((1 - part.float().mean().item()) - q) < 5 * sigma
    assert methods.keep_mask(torch.Size([10]), 0.5)[0].dtype == torch.bool


def test_lora_uses_mask_dropout():
    model, _ = models.load("tiny-random-llama")
    model = methods.apply(model, MethodConfig(method="lora", rank=2, targets="attention", dropout=0.1))
    drops = [d for m in model.modules() for d in getattr(m, "lora_dropout", {}).values()]
    assert len(drops) == 4 * 4 and all(type(d) is MaskDropout and d.p == 0.1 for d in drops)


def test_peak_rss_is_per_run_not_per_process():
    """A study trains its runs in one process: each run's peak must be its own, not the largest so far."""
    from learnforget import train

    big = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
    assert train.peak_rss_mb() >= big.numel() * 4 / 2**20
    high = train.peak_rss_mb()
    del big
    train.reset_peak_rss()
    assert train.peak_rss_mb() < high - 32  # the 64 MB are gone from the new peak


def test_chunked_loss_under_bf16_autocast_stays_close_to_fp32():
    """bf16 mixed precision: the head's matmuls run in bf16 (its result differs from fp32's), the loss and
    the gradients stay within bf16 rounding of the fp32 plain path."""
    from learnforget.cpu import onednn

    model, _ = models.load("tiny-random-llama")
    model.train()
    ids, labels = batch(ift=True)
    ref = loss_and_grads(model, ids, labels, None)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), onednn.linears(model, training=True):
        loss, n = token_losses(model, ids, labels)
        (loss / n).backward()
    assert loss.dtype == torch.float32 and float(loss) != ref[0]
    assert float(loss) == pytest.approx(ref[0], rel=1e-2)
    for k, p in model.named_parameters():
        g = ref[2][k]
        assert p.grad.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(p.grad.flatten(), g.flatten(), dim=0) > 0.99, k
