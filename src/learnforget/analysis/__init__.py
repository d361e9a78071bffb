"""Why LoRA learns less and forgets less: analyses of (base, checkpoint) pairs.

  spectrum   ΔW per linear weight of the blocks, rank needed for 90% of Σσ², vs base W and random
  intruders  intruder dimensions of the fine-tuned weights (arXiv 2410.21228)
  diversity  sampled solutions per problem: correct, distinct correct, pass@k (HumanEval, GSM8K)

Import the submodules directly (`from learnforget.analysis import spectrum`): they load torch.
"""
