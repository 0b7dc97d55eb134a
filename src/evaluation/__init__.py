"""Downstream evaluation: multiple-choice tasks scored by log-likelihood, and perplexity."""
