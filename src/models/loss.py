"""Next-token cross-entropy computed from the trunk's hidden states and the LM head weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_cross_entropy(hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, T, C) hidden states against (B, T) target ids, in fp32."""
    logits = F.linear(hidden, head_weight)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
