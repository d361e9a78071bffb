"""CPU speed-ups that change no result beyond float rounding: oneDNN linear layers (onednn.py) and glibc
malloc settings for evaluation (allocator.py)."""
