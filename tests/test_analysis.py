"""Spectrum and intruder analysis on the tiny random Llama, with updates whose answer is known."""

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from learnforget import checkpoint, models
from learnforget.analysis import intruders as intr
from learnforget.analysis import spectrum as sp
from learnforget.errors import UserError

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The matrices here are tiny: on a busy 2-core machine, a second BLAS thread only adds waiting.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base():
    model, _ = models.load("tiny-random-llama")
    return model.eval()


def _perturbed(base, update) -> torch.nn.Module:
    """A copy of base with update(name, W) added to every block linear weight."""
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for name, module in tuned.named_modules():
            short = sp.block_name(name)
            if short is not None and isinstance(module, torch.nn.Linear):
                module.weight += update(short, module.weight)
    return tuned


def _lora(base, r=4, targets=ALL, seed=0, **config) -> PeftModel:
    """A LoRA PeftModel with random nonzero B (PEFT initialises B = 0, which would make ΔW = 0)."""
    peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, **config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return peft.eval()


# ---------------------------------------------------------------- names and deltas

def test_names():
    assert sp.block_name("base_model.model.model.layers.3.mlp.up_proj") == "layers.3.mlp.up_proj"
    assert sp.block_name("model.embed_tokens") is None and sp.block_name("lm_head") is None
    assert sp.layer_index("layers.12.self_attn.o_proj") == 12
    assert sp.module_type("layers.0.self_attn.q_proj") == "q" and sp.module_type("layers.0.mlp.down_proj") == "down"


def test_full_deltas(base):
    tuned = _perturbed(base, lambda n, w: torch.full_like(w, 0.5) if n == "layers.2.mlp.up_proj" else torch.zeros_like(w))
    deltas = sp.weight_deltas(base, tuned)
    assert len(deltas) == 4 * 7 and "layers.0.self_attn.q_proj" in deltas
    w, d = deltas["layers.2.mlp.up_proj"]
    assert w.shape == d.shape == (256, 64)
    assert torch.equal(w, base.model.layers[2].mlp.up_proj.weight)
    assert torch.allclose(d, torch.full_like(d, 0.5))
    assert all(d.abs().max() == 0 for n, (_, d) in deltas.items() if n != "layers.2.mlp.up_proj")


# ---------------------------------------------------------------- rank@90%

def test_rank_at():
    assert sp.rank_at(torch.tensor([3.0, 1.0])) == 1  # 9 of 10
    assert sp.rank_at(torch.tensor([1.0, 1.0, 1.0, 1.0])) == 4  # 3.6 of 4 needs all four
    assert sp.rank_at(torch.tensor([1.0, 3.0]), 0.5) == 1  # order of the input does not matter
    assert sp.rank_at(torch.ones(5), 1.0) == 5
    assert sp.rank_at(torch.zeros(7)) == 0


@pytest.mark.parametrize("r", [2, 4])
def test_low_rank_update(base, r):
    g = torch.Generator().manual_seed(r)

    def low_rank(name, w):
        return torch.randn(w.shape[0], r, generator=g) @ torch.randn(r, w.shape[1], generator=g) * 0.01

    rows = sp.spectrum(sp.weight_deltas(base, _perturbed(base, low_rank)))
    assert len(rows) == 28
    for row in rows:
        assert 1 <= row["rank"] <= r, row
        assert row["rank_fraction"] == row["rank"] / row["full_rank"]
        # The random init and a Gaussian matrix of the same norm are far from low rank.
        assert row["base_rank"] > 3 * r and row["random_rank"] > 3 * r


def test_full_rank_update(base):
    g = torch.Generator().manual_seed(1)
    rows = sp.spectrum(sp.weight_deltas(base, _perturbed(base, lambda n, w: torch.randn(w.shape, generator=g) * 0.01)))
    for row in rows:
        # Marchenko-Pastur: 90% of a Gaussian matrix's energy needs about half its rank or more.
        assert row["rank_fraction"] > 0.4, row
        # A Gaussian ΔW should look like the Gaussian reference (same law, different draw).
        assert abs(row["rank"] - row["random_rank"]) <= 0.1 * row["full_rank"] + 1, row


def test_spectrum_options(base):
    deltas = sp.weight_deltas(base, _perturbed(base, lambda n, w: 0.01 * w))
    rows = sp.spectrum(deltas, base=False, random=False, keep_singular_values=True)
    row = rows[0]
    assert "base_rank" not in row and "random_rank" not in row
    assert len(row["singular_values"]) == row["full_rank"]
    # ΔW = 0.01·W: same shape of spectrum, so the same rank as W itself.
    full = sp.spectrum(deltas)
    assert all(r["rank"] == r["base_rank"] for r in full)
    assert full[0]["delta_fro"] == pytest.approx(0.01 * float(deltas[full[0]["module"]][0].norm()), rel=1e-4)
    # Seeded: the random reference is reproducible.
    assert [r["random_rank"] for r in sp.spectrum(deltas)] == [r["random_rank"] for r in full]


def test_orientation_and_batching():
    g = torch.Generator().manual_seed(0)
    wide = [torch.randn(16, 48, generator=g) for _ in range(3)]
    mats = wide + [w.T for w in wide] + [torch.randn(20, 20, generator=g)]
    got = sp.singular_values(mats)
    for m, s in zip(mats, got):
        assert torch.allclose(s, torch.linalg.svdvals(m), atol=1e-5)
    for a, b in zip(got[:3], got[3:6]):
        assert torch.allclose(a, b, atol=1e-5)
    gram = sp.singular_values(mats, method="gram")
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-3) for a, b in zip(got, gram))


def test_summarize(base):
    rows = sp.spectrum(sp.weight_deltas(base, _perturbed(base, lambda n, w: 0.01 * w)), random=False)
    table = sp.summarize(rows)
    assert [t["type"] for t in table] == ["q", "k", "v", "o", "gate", "up", "down"]
    q = table[0]
    assert q["modules"] == 4 and q["full_rank"] == 64
    assert q["rank_mean"] == sum(r["rank"] for r in rows if r["type"] == "q") / 4
    assert "base_rank_mean" in q and "random_rank_mean" not in q


# ---------------------------------------------------------------- LoRA

def test_lora_deltas(base):
    r = 4
    peft = _lora(base, r)
    deltas = sp.weight_deltas(base, peft)
    assert len(deltas) == 28
    layer = peft.base_model.model.model.layers[1].mlp.down_proj
    w, d = deltas["layers.1.mlp.down_proj"]
    expected = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    assert layer.scaling["default"] == 2.0
    assert torch.allclose(d, expected, atol=1e-6)
    assert torch.equal(w, base.model.layers[1].mlp.down_proj.weight)
    for name, (_, d) in deltas.items():
        assert d.abs().max() > 0
        assert torch.linalg.matrix_rank(d) <= r
    assert all(row["rank"] <= r for row in sp.spectrum(deltas, base=False, random=False))


def test_lora_spectrum_from_factors_is_the_dense_one(base):
    peft = _lora(base, 3)
    deltas, factors = sp.weight_deltas(base, peft), sp.lora_factors(peft)
    assert factors.keys() == deltas.keys()
    for name, (b, a) in factors.items():
        assert torch.allclose(b @ a, deltas[name][1], atol=1e-6)  # the scaling is folded into B
        dense = torch.linalg.svdvals(deltas[name][1].double()).float()
        got = sp.low_rank_singular_values(b, a)
        assert got.shape == dense.shape and torch.allclose(got, dense, atol=1e-5, rtol=1e-4)
        assert torch.equal(got[3:], torch.zeros(len(got) - 3))
    want = sp.spectrum(deltas, base=False, random=False, method="svd", keep_singular_values=True)
    got = sp.spectrum(deltas, base=False, random=False, method="gram", keep_singular_values=True, factors=factors)
    assert [r["rank"] for r in got] == [r["rank"] for r in want] and max(r["rank"] for r in got) == 3
    for g, w in zip(got, want):
        assert g["singular_values"][:3] == pytest.approx(w["singular_values"][:3], rel=1e-4)


def test_lora_factors_leave_out_variants(base):
    assert sp.lora_factors(_lora(base, 2, ["v_proj"], use_dora=True)) == {}  # DoRA's ΔW is dense
    assert sp.lora_factors(base) == {}


def test_lora_only_adapted_modules(base):
    deltas = sp.weight_deltas(base, _lora(base, 2, ["q_proj", "v_proj"]))
    assert sorted({sp.module_type(n) for n in deltas}) == ["q", "v"] and len(deltas) == 8


def test_dora_delta_is_merged_minus_base(base):
    # A variant's ΔW is not scaling·B·A (DoRA rescales columns): it must match PEFT's own merge.
    peft = _lora(base, 2, ["v_proj"], use_dora=True)
    deltas = sp.weight_deltas(base, peft)
    merged = copy.deepcopy(peft).merge_and_unload()
    for name, (w, d) in deltas.items():
        i = sp.layer_index(name)
        assert torch.allclose(w + d, merged.model.layers[i].self_attn.v_proj.weight, atol=1e-5)


def test_checkpoint_load(base, tmp_path):
    peft = _lora(base, 2)
    peft.save_pretrained(tmp_path / "adapter")
    full = _perturbed(base, lambda n, w: 0.01 * w)
    full.save_pretrained(tmp_path / "full")
    assert checkpoint.is_adapter(tmp_path / "adapter") and not checkpoint.is_adapter(tmp_path / "full")

    loaded = checkpoint.load(base, tmp_path / "adapter", merge=False)
    assert isinstance(loaded, PeftModel)
    want, got = sp.weight_deltas(base, peft), sp.weight_deltas(base, loaded)
    assert want.keys() == got.keys()
    assert all(torch.allclose(want[n][1], got[n][1]) for n in want)
    # The caller's base model was copied, not wrapped in place.
    assert not any("lora_" in n for n, _ in base.named_modules())
    merged = checkpoint.load(base, tmp_path / "adapter", merge=True)  # evaluation's: the adapter folded into W
    assert not isinstance(merged, PeftModel) and not any("lora_" in n for n, _ in merged.named_modules())
    d = sp.weight_deltas(base, merged)
    assert all(torch.allclose(want[n][1], d[n][1], atol=1e-6) for n in want)
    assert not any("lora_" in n for n, _ in base.named_modules())

    loaded = checkpoint.load(base, tmp_path / "full", merge=False)
    assert not isinstance(loaded, PeftModel)
    d = sp.weight_deltas(base, loaded)["layers.0.self_attn.q_proj"][1]
    assert torch.allclose(d, 0.01 * base.model.layers[0].self_attn.q_proj.weight, atol=1e-6)

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither config.json"):
        checkpoint.load(base, tmp_path / "empty", merge=False)
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load(base, tmp_path / "missing", merge=False)


# ---------------------------------------------------------------- intruder dimensions

def _rotate_top(W: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """W' = U' S Vᵀ where U' replaces W's top-k left singular vectors by orthonormal directions
    orthogonal to *all* of W's left singular vectors. Needs a tall W (m > n): its n left singular
    vectors span only an n-dimensional subspace of R^m, so an orthogonal complement exists."""
    m, n = W.shape
    assert m >= n + k
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    X = torch.randn(m, k, generator=torch.Generator().manual_seed(seed), dtype=W.dtype)
    X = X - U @ (U.T @ X)  # project out W's column space
    Q = torch.linalg.qr(X)[0]
    U2 = U.clone()
    U2[:, :k] = Q
    return U2 @ torch.diag(S) @ Vh


def _small_noise(W: torch.Tensor, seed: int = 0) -> torch.Tensor:
    # 1e-3 of W's own scale: a perturbation that should not move any top direction.
    return 1e-3 * W.std() * torch.randn(W.shape, generator=torch.Generator().manual_seed(seed))


def test_intruder_counts_single(base):
    W = base.model.layers[0].mlp.gate_proj.weight.detach()  # 256 × 64: tall
    res = intr.intruder_counts(W, _rotate_top(W, 4), k=4)
    assert res["k"] == 4 and res["counts"] == {"0.5": 4, "0.6": 4, "0.7": 4, "0.8": 4, "0.9": 4}
    assert max(res["similarity"]) < 1e-4
    # k beyond the rotated ones: the rest are W's own directions (cos ≈ 1).
    res = intr.intruder_counts(W, _rotate_top(W, 4), k=10)
    assert res["counts"]["0.9"] == 4 and min(res["similarity"][4:]) > 0.99
    quiet = intr.intruder_counts(W, W + _small_noise(W), k=10)
    assert all(c == 0 for c in quiet["counts"].values()), quiet


def test_left_singular_vectors_wide():
    # Distinct singular values, so the vectors are unique up to sign.
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(16, 16, generator=g))[0]
    V = torch.linalg.qr(torch.randn(40, 16, generator=g))[0]
    W = U @ torch.diag(torch.linspace(10, 1, 16)) @ V.T  # 16 × 40: wide
    got = intr.left_singular_vectors(W)
    assert got.shape == (16, 16)
    assert torch.allclose((got.T @ U).diagonal().abs(), torch.ones(16), atol=1e-4)
    # Same for a batch, and the wide/tall code paths agree via transposition.
    assert torch.allclose(intr.left_singular_vectors(torch.stack([W, 2 * W]))[1].abs(), got.abs(), atol=1e-4)
    assert torch.allclose((intr.left_singular_vectors(W.T).T @ V).diagonal().abs(), torch.ones(16), atol=1e-4)


@pytest.mark.parametrize("shape", [(40, 16), (16, 40), (16, 16)])
def test_top_left_singular_vectors(shape):
    # The Gram-matrix shortcut must give the SVD's top vectors (up to sign) in every orientation.
    g = torch.Generator().manual_seed(1)
    m, n = shape
    r = min(m, n)
    U = torch.linalg.qr(torch.randn(m, r, generator=g))[0]
    V = torch.linalg.qr(torch.randn(n, r, generator=g))[0]
    W = torch.stack([U @ torch.diag(torch.linspace(10, 1, r)) @ V.T] * 2)
    top = intr.top_left_singular_vectors(W, 5)
    assert top.shape == (2, m, 5)
    assert torch.allclose((top[0].T @ U[:, :5]).diagonal().abs(), torch.ones(5), atol=1e-4)


def test_intruders_whole_model(base):
    target = "layers.1.mlp.gate_proj"

    def update(name, w):
        return _rotate_top(w.detach(), 3) - w.detach() if name == target else _small_noise(w.detach())

    deltas = sp.weight_deltas(base, _perturbed(base, update))
    res = intr.intruders(deltas, k=5)
    assert res["k"] == 5 and res["eps"] == list(intr.EPS)
    assert len(res["modules"]) == 28 and res["modules"][0]["module"] == "layers.0.self_attn.q_proj"
    for row in res["modules"]:
        want = 3 if row["module"] == target else 0
        assert all(c == want for c in row["counts"].values()), row
    assert res["by_type"]["gate"] == dict.fromkeys(["0.5", "0.6", "0.7", "0.8", "0.9"], 3)
    assert res["by_type"]["q"]["0.9"] == 0 and list(res["by_type"]) == ["q", "k", "v", "o", "gate", "up", "down"]
    assert res["total"]["0.5"] == 3
    # Base vectors computed once and reused give the same answer.
    again = intr.intruders(deltas, k=5, base_U=intr.base_vectors(deltas))
    assert again["total"] == res["total"]


def test_intruders_lora(base):
    # A LoRA update is an intruder detector's natural customer: it runs end to end on a PeftModel.
    res = intr.intruders(sp.weight_deltas(base, _lora(base, 2, ["q_proj"])), k=3, eps=(0.5,))
    assert len(res["modules"]) == 4 and list(res["total"]) == ["0.5"]
