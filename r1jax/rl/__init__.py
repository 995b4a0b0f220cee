"""GRPO reinforcement learning: DeepSeek-R1 (arXiv:2501.12948) Sec. 2.2 (R1-Zero)."""
