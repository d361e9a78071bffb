"""Library noise off for the command line, so that what a person reads is learnforget's own lines: no
transformers info/warning chatter, no accelerate note on the tied lm_head it drops when saving (expected:
the weights are tied), no PEFT deprecation warning. Progress bars stay, except in a study's parallel
workers, whose bars would garble each other on one terminal (the parent reports their progress)."""

from __future__ import annotations

import logging
import warnings


def libraries(bars: bool = True) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if not bars:
        hf_logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

