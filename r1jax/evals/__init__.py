"""Evaluation: pass@k, cons@k and offline checkpoint evaluation (DeepSeek-R1 Sec. 3)."""
