"""Training: CLI, loop, data, zero-shot evaluation, checkpoints, distributed. Nothing imports this package."""
