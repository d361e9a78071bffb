"""Evaluation's oneDNN-packed linears give the plain path's numbers, leave gradients alone, and undo themselves."""

import pytest
import torch

from learnforget import models
from learnforget.cpu import onednn

pytestmark = pytest.mark.skipif(not onednn.available(torch.nn.Linear(2, 2)), reason="PyTorch built without oneDNN")


def linears(model):
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


def test_packed_linears_match_plain_and_are_restored():
    model, _ = models.tiny_random_llama()
    ids = torch.randint(3, 259, (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        with onednn.linears(model):
            assert all("forward" in vars(m) for m in linears(model))
            packed = model(input_ids=ids).logits
    assert not any("forward" in vars(m) for m in linears(model))
    assert torch.allclose(packed, plain, atol=1e-4, rtol=1e-4)


def test_calls_needing_gradients_take_the_plain_path():
    model, _ = models.tiny_random_llama()
    ids = torch.randint(3, 259, (2, 9), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids).logits.sum().backward()
    expected = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    with onednn.linears(model):
        model(input_ids=ids).logits.sum().backward()
    for k, p in model.named_parameters():
        assert torch.equal(p.grad, expected[k]), k


def test_not_float32_is_a_no_op_and_errors_restore():
    model, _ = models.tiny_random_llama()
    with onednn.linears(model.to(torch.bfloat16)):
        assert not any("forward" in vars(m) for m in linears(model))
    model = model.float()
    with pytest.raises(RuntimeError, match="boom"):
        with onednn.linears(model):
            raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in linears(model))


def test_training_linear_matches_f_linear_values_and_gradients():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 24, generator=g, requires_grad=True)
    w = torch.randn(40, 24, generator=g, requires_grad=True)
    b = torch.randn(40, generator=g, requires_grad=True)
    up = torch.randn(3, 5, 40, generator=g)
    got = onednn.linear(x, w, b)
    (got * up).sum().backward()
    grads = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    want = torch.nn.functional.linear(x, w, b)
    (want * up).sum().backward()
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    for mine, ref in zip(grads, (x.grad, w.grad, b.grad)):
        assert torch.allclose(mine, ref, atol=1e-4, rtol=1e-5)


def test_training_mode_patches_without_packing_and_frozen_weights_get_no_gradient():
    model, _ = models.tiny_random_llama()
    for p in model.parameters():
        p.requires_grad_(False)
    head = model.get_output_embeddings()
    ids = torch.randint(3, 259, (2, 9), generator=torch.Generator().manual_seed(3))
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    with onednn.linears(model, training=True):
        out = model(inputs_embeds=emb).logits
    out.sum().backward()
    assert emb.grad is not None and all(p.grad is None for p in model.parameters())
    ref_emb = emb.detach().clone().requires_grad_(True)
    model(inputs_embeds=ref_emb).logits.sum().backward()
    assert torch.allclose(emb.grad, ref_emb.grad, atol=1e-4, rtol=1e-4)
    assert "forward" not in vars(head)


def test_frozen_weights_under_autocast_give_autocasts_numbers_and_trainable_ones_their_gradients():
    """bf16 mixed precision with LoRA's frozen base: the frozen weights are cast once per context, with the
    same rounding as autocast's own cast, so the outputs are autocast's, bit for bit."""
    model, _ = models.tiny_random_llama()
    for n, p in model.named_parameters():
        p.requires_grad_("q_proj" in n)
    ids = torch.randint(3, 259, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(ids).logits
        ref.float().sum().backward()
        ref_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad(set_to_none=True)
        with onednn.linears(model, training=True):
            got = model(ids).logits
            again = model(ids).logits
        got.float().sum().backward()
    assert torch.equal(got, ref) and torch.equal(again, ref)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert len(grads) == model.config.num_hidden_layers and all(torch.allclose(g, r, rtol=1e-2, atol=1e-3) for g, r in zip(grads, ref_grads))


def test_environment_switch_turns_it_off(monkeypatch):
    model, _ = models.tiny_random_llama()
    monkeypatch.setenv("LEARNFORGET_ONEDNN", "0")
    with onednn.linears(model), onednn.linears(model, training=True):
        assert not any("forward" in vars(m) for m in linears(model))
    w = torch.randn(3, 4, requires_grad=True)
    assert type(onednn.linear(torch.randn(2, 4), w).grad_fn).__name__ != "_LinearBackward"  # F.linear's own node
    monkeypatch.setenv("LEARNFORGET_ONEDNN", "1")
    assert type(onednn.linear(torch.randn(2, 4), w).grad_fn).__name__ == "_LinearBackward"
