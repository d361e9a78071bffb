"""Training: one loop (loop.py) for full fine-tuning and LoRA (methods.py), CPT and IFT, one process or many.

`run(cfg)` trains one RunConfig into its run folder. The study also uses `heldout_sets` (the held-out
rows a run scores), `versions` and the per-run peak-memory pair `reset_peak_rss` / `peak_rss_mb`.
"""

from .heldout import heldout_sets
from .loop import run
from .record import peak_rss_mb, read_metrics, reset_peak_rss, versions

__all__ = ["heldout_sets", "peak_rss_mb", "read_metrics", "reset_peak_rss", "run", "versions"]
