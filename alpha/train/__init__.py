"""Training: the loop and its components (optimizer, schedule, guards, checkpoints, sampling)."""
