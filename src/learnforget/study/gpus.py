"""The GPUs a GPU study's dry run plans for, and the utilisation it assumes: each figure with its source.

Throughput = GPUs x dense bf16 peak x MFU / model FLOPs per token. The MFU is a published figure for a
configuration like the paper's full fine-tuning run, not a measurement of learnforget's own stack.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_tflops: float  # dense bf16 tensor-core peak, TFLOP/s (datasheets print the 2:4-sparsity figure, twice this)
    memory_gb: float  # as the datasheet gives it (GB; about 80 GiB usable on an H100)
    source: str


GPUS = (
    # NVIDIA H100 datasheet: "BFLOAT16 Tensor Core 1,979 teraFLOPS*", "* With sparsity" -> 989 dense; 80 GB HBM3.
    GPU("H100 SXM", 989.0, 80.0, "NVIDIA H100 datasheet, https://www.nvidia.com/en-us/data-center/h100/ "
                                 "(BF16 1,979 TFLOP/s with sparsity = 989 dense; 80 GB)"),
    # NVIDIA H200 datasheet: BF16 1,979 TFLOP/s with sparsity (the H100's GH100 compute), 141 GB HBM3e at 4.8 TB/s.
    GPU("H200", 989.0, 141.0, "NVIDIA H200 datasheet, https://www.nvidia.com/en-us/data-center/h200/ "
                              "(BF16 1,979 TFLOP/s with sparsity = 989 dense; 141 GB)"),
)

# Model FLOPs utilisation. LLM Foundry's published H100 benchmark table (mosaicml/llm-foundry,
# scripts/train/benchmarking/README.md, "H100 80GB BF16"), the row closest to the paper's full
# fine-tuning: MPT-7B, sequence 4096, 8 x H100 80GB, amp_bf16, FSDP FULL_SHARD, activation
# checkpointing, micro-batch 16: MFU 40.42% (HFU 53.9%), 8,611 tokens/s/GPU. Its MFU counts
# 6N + 12 * layers * d * seq FLOPs per token (attention without the causal halving): mfu_flops_per_token.
# Cross-check: Llama 3 (Dubey et al. 2024, arXiv 2407.21783, Table 4) reports 38-43% BF16 MFU for
# 405B pre-training on 8,192-16,384 H100s.
MFU = 0.4042
MFU_SOURCE = ("MFU 40.42%: LLM Foundry's H100 benchmark (github.com/mosaicml/llm-foundry, scripts/train/benchmarking/"
              "README.md): MPT-7B, seq 4096, 8 x H100 80GB, bf16, FSDP FULL_SHARD, activation checkpointing, 8,611 "
              "tokens/s/GPU; Llama 3 (arXiv 2407.21783, Table 4) reports 38-43% BF16 MFU on 8K-16K H100s")
