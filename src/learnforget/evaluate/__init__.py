"""Evaluation: benchmark tasks, code execution sandbox, scoring."""
