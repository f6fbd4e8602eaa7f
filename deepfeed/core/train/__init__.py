"""Model loading, the training loop, its loss terms (distillation, EWC) and checkpoints."""
