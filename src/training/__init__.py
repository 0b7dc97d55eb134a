"""Training: the LightningModule, LR schedule, non-finite policy, checkpoint format, hardware setup."""
