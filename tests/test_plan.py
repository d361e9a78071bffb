"""The GPU plan of a dry run (study/gpu_plan.py): its memory model checked against what autograd keeps and
against hand arithmetic, its speed against the cited figures, and its commands against the CLI."""

import shlex
from pathlib import Path

import pytest
import torch

from learnforget import cli
from learnforget.train import launch
from learnforget.config import MethodConfig
from learnforget.study import cost, gpu_plan, gpus, plan

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LLAMA2_7B = cost.Shape(layers=32, d=4096, ff=11008, vocab=32000, heads=32, kv=4096, tied=False)


def _saved(model, ids):
    """Bytes autograd keeps for backward during a forward under bf16 autocast, per storage (views counted once):
    (tensors with a per-token size: activations, weight-shaped bf16 tensors: casts of weights)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params and t.dtype != torch.int64:  # not the weights themselves, not the token ids
            seen[st.data_ptr()] = (t.numel(), t.dim(), t.dtype, st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids)
    tokens = ids.numel()
    act = sum(b for n, _, _, b in seen.values() if n % tokens == 0)
    casts = sum(b for n, dim, dt, b in seen.values() if n % tokens and dim == 2 and dt == torch.bfloat16)
    return act, casts


@pytest.mark.parametrize("fp32_weights", [True, False], ids=["fp32-weights", "bf16-weights(fsdp)"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_activation_formula_is_what_autograd_keeps(fp32_weights, method):
    """The per-layer formula (fp32 residual under autocast; bf16 residual as FSDP's bf16 weights give), with
    LoRA's inputs, outputs and 1-byte dropout masks, equals the bytes autograd saves in a tiny Llama decoder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from learnforget.train import methods

    torch.manual_seed(0)
    c = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, tie_word_embeddings=False, attn_implementation="sdpa")
    s = cost.Shape(layers=2, d=64, ff=172, vocab=300, heads=4, kv=32, tied=False)
    m = MethodConfig(method=method, rank=8, dropout=0.05)
    model = methods.apply(LlamaForCausalLM(c), m)
    if not fp32_weights:
        model = model.to(torch.bfloat16)
    model.train()
    # every layer as a middle one: without this, LoRA's first layer keeps less (no gradient flows before its
    # first adapter), which the plan does not subtract
    model.enable_input_require_grads()
    ids = torch.randint(0, 300, (3, 40))  # 120 tokens: no weight's size is a multiple of it
    decoder = model.get_base_model().model if method == "lora" else model.model  # the decoder stack + final norm
    act, casts = _saved(decoder, ids)
    layer, _ = gpu_plan.activation_bytes(s, m, fp32_residual=fp32_weights)
    # its input (or fp32 copy), 1/rms, and its normalised output when its weight trains
    final_norm = (4 if method == "lora" else 8 if fp32_weights else 6) * s.d + 4
    assert act == s.layers * layer * ids.numel() + final_norm * ids.numel()
    # bf16 casts of weights kept by the matmuls: only with fp32 weights (frozen ones per matmul, trainable ones cached)
    assert casts == ((2 * (s.layers * s.layer_params + s.lora_params(m))) if fp32_weights else 0)


def test_memory_of_7b_full_adamw_under_8way_fsdp_by_hand(tmp_path):
    """Llama-2-7B full fine-tuning, AdamW, 8-way FSDP, 4 x 4096 tokens a micro-batch, checkpointing, by hand."""
    s = plan.load(CONFIGS / "paper-code-cpt.yaml")
    full = next(r for r in plan.expand(s, tmp_path) if r.family == "full")
    full.config.train.optimizer = "adamw"
    mem = gpu_plan.memory(LLAMA2_7B, full.config)
    n = 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 2 * 32000 * 4096
    assert n == 6_738_149_376  # Llama-2-7B without its norm weights (6,738,415,616 with them)
    assert mem["weights"] == mem["gradients"] == 4 * n / 8 == pytest.approx(3.369e9, rel=1e-3)
    assert mem["optimizer"] == 8 * n / 8  # two fp32 moments
    assert 16 * n / 8 / 1e9 == pytest.approx(13.48, abs=0.01)  # the 16 B/parameter of mixed-precision AdamW, sharded
    layer = 4 * 4096**2 + 3 * 4096 * 11008
    assert mem["bf16 copies"] == 2 * (2 * 32000 * 4096 + 2 * layer) * 2  # root + two layers in flight, weights and gradients
    assert mem["DDP buckets"] == 0
    T = 4 * 4096
    per_layer = 20 * 4096 + 4 * 4096 + 8 * 11008 + 4 * 32 + 8  # bf16 residual stream (FSDP's bf16 weights)
    assert mem["activations, checkpointing"] == 32 * 2 * 4096 * T + per_layer * T == pytest.approx(7.35e9, rel=1e-3)
    assert mem["activations, no checkpointing"] == 32 * per_layer * T == pytest.approx(97.8e9, rel=1e-3)
    total = mem["total, checkpointing"]
    assert total == pytest.approx(sum(v for k, v in mem.items() if not k.startswith("total") and k != "activations, no checkpointing"))
    assert 20e9 < total < 80e9  # fits an H100 with room; without sharding it would not:
    alone = full.config
    alone.train.processes, alone.train.distributed = 1, "ddp"
    assert gpu_plan.memory(LLAMA2_7B, alone)["total, checkpointing"] > 80e9


def test_lora_7b_fits_one_80gb_gpu(tmp_path):
    """LoRA r=256 on all modules keeps the frozen 7B in fp32 (27 GB) and fits one 80 GB GPU with checkpointing."""
    s = plan.load(CONFIGS / "paper-code-cpt.yaml")
    r256 = next(r for r in plan.expand(s, tmp_path) if r.config.method.label() == "lora-r256-all")
    mem = gpu_plan.memory(LLAMA2_7B, r256.config)
    n_lora = 32 * 256 * (4 * (4096 + 4096) + 3 * (4096 + 11008))
    assert mem["weights"] == 4 * (6_738_149_376 + n_lora) and mem["gradients"] == 4 * n_lora == mem["optimizer"]  # Lion: 1 moment
    assert mem["total, checkpointing"] < 80e9 < mem["total, no checkpointing"]


def test_speed_is_peak_times_the_cited_mfu():
    """Tokens/s = GPUs x 989 TFLOP/s x 40.42% / (6N + 12 L d s): for MPT-7B's shape this reproduces the cited
    8,611 tokens/s/GPU of LLM Foundry's table, the figure the MFU came from."""
    h100 = next(g for g in gpus.GPUS if g.name == "H100 SXM")
    assert (h100.bf16_tflops, h100.memory_gb, gpus.MFU) == (989.0, 80.0, 0.4042)
    n_mpt7b = 6_667_247_616  # the table's NumParams for the 7b, seq 4096 row
    per_gpu = h100.bf16_tflops * 1e12 * gpus.MFU / (6 * n_mpt7b + 12 * 32 * 4096 * 4096)
    assert per_gpu == pytest.approx(8611, rel=0.002)
    full = MethodConfig(method="full")
    assert gpu_plan.mfu_flops_per_token(LLAMA2_7B, full, 4096) == 6 * LLAMA2_7B.total + 12 * 32 * 4096 * 4096


def test_train_command_is_the_run(tmp_path):
    """The printed `learnforget train ...` of a one-process run parses back to exactly its RunConfig."""
    s = plan.load(CONFIGS / "paper-code-ift.yaml")
    for r in plan.expand(s, tmp_path):
        argv = gpu_plan.train_argv(r.config)
        p = cli.build_parser()
        assert cli.train_config(p.parse_args(argv[1:])).to_dict() == r.config.to_dict(), argv


def test_paper_dry_run_prints_the_gpu_plan(monkeypatch, capsys, tmp_path):
    """`HF_HUB_OFFLINE=1 learnforget study configs/paper-code-cpt.yaml --dry-run`: per run its processes, memory per
    GPU, speed and GPU-hours on the H100 and H200 with their sources, and the command that launches it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(cost, "measure_matmul_flops", lambda seconds=1.0: 1e11)
    out_dir = tmp_path / "s"
    assert cli.main(["study", str(CONFIGS / "paper-code-cpt.yaml"), "--dry-run", "--no-power", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    runs = plan.expand(plan.load(CONFIGS / "paper-code-cpt.yaml"), out_dir / "paper-code-cpt")
    lines = out[out.index("GPU plan"):].splitlines()
    for r in runs:
        i = lines.index(Path(r.config.out).name)
        how, mem, total, speed, _, cmd = lines[i + 1:i + 7]
        assert how.startswith(f"  {r.config.train.processes} process")
        assert mem.startswith("  memory per GPU, GB: weights") and "gradients" in mem and "optimizer" in mem
        assert "activations" in mem and "with checkpointing" in mem and "without)" in mem
        assert "H100 SXM 80 GB fits" in total and "H200 141 GB fits" in total
        assert all(f"{g} " in speed for g in ("H100 SXM", "H200")) and speed.count("GPU-hours") == 2
        if r.family == "full":  # 8 processes, FSDP: the launcher's argv with the run's RUN.json in its folder
            assert "FSDP (weights, gradients and optimizer state fully sharded over 8 GPUs)" in how
            assert shlex.split(cmd) == launch.command(r.config, Path(r.config.out) / "launch.json")
        else:
            assert "one GPU" in how and shlex.split(cmd) == gpu_plan.train_argv(r.config)
    # the full run: 8-way FSDP, about 21 GB a GPU; 651 GPU-hours for 20B tokens at the cited MFU
    i = lines.index(Path(next(r for r in runs if r.family == "full").config.out).name)
    assert "= 21.3 GB as configured" in lines[i + 3] and "651 GPU-hours" in lines[i + 4]
    gpu = "\n".join(lines)
    for source in ("LLM Foundry", "40.42%", "arXiv 2407.21783", "38-43%", "arXiv 2205.05198", "nvidia.com/en-us/data-center/h100",
                   "nvidia.com/en-us/data-center/h200", "989 dense"):
        assert source in gpu, source
    assert not out_dir.exists()


def test_cpu_study_prints_no_gpu_plan(code_corpus, tmp_path, capsys):
    """A CPU study (executor.num_gpus 0) keeps its plan as it was: no GPU section."""
    from test_study import write_study

    assert cli.main(["study", str(write_study(tmp_path, code_corpus)), "--dry-run", "--no-power", "--no-probe",
                     "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "3 runs; estimated training time" in out and "GPU plan" not in out and "On this machine" not in out
