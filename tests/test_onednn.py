"""Evaluation's oneDNN-packed linears give the plain path's numbers, leave gradients alone, and undo themselves."""

import pytest
import torch

from learnforget import models, onednn

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
