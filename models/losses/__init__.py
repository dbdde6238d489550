"""Losses."""
from .cross_entropy import CrossEntropyLoss, cross_entropy

__all__ = ["CrossEntropyLoss", "cross_entropy"]
