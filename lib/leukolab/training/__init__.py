"""Training: batch augmentation, losses and the fit loop."""
