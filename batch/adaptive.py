"""Kept for imports written before ``batch.flow``: the learned rate is ``batch.flow.pace.LearnedRate``."""

from .flow.pace import LearnedRate as AdaptiveRate

__all__ = ["AdaptiveRate"]
