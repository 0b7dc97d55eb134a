"""Tracking: loggers (CSV, W&B) and what they record about a run."""
