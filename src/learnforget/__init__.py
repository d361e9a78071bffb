"""learnforget: does LoRA learn less and forget less than full fine-tuning, on your model and data?"""

__version__ = "0.1.0"
