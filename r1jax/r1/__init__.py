"""The DeepSeek-R1 pipeline (cold start, reasoning RL, rejection sampling + SFT, all-scenario RL) and distillation."""
