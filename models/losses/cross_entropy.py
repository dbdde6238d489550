"""Pixel-wise cross-entropy with an ignore label, as the reference segmentor computes it."""
import jittor as jt
from jittor import nn

__all__ = ["cross_entropy", "CrossEntropyLoss"]


def cross_entropy(logits, label, ignore_index=255, reduction="mean"):
    """Cross-entropy of (B, K, H, W) logits against (B, H, W) integer labels.

    Computed as logsumexp(logits) - logits[label] with a max-shifted
    log-sum-exp, in float32. Pixels labelled ``ignore_index`` contribute 0.

    Args:
        logits (jt.Var): (B, K, H, W) class scores.
        label (jt.Var): (B, H, W) integer labels in [0, K) or ``ignore_index``.
            Other out-of-range values are not checked (they act as a target
            with logit 0, the reference would raise).
        ignore_index (int): label excluded from the loss (255).
        reduction (str): "mean": mean over the valid pixels of the whole batch
            (the reference's masked mean, equal to PyTorch's "mean" with
            ignore_index); "sum"; "none": the (B, H, W) loss map, 0 at ignored pixels.

    A batch without any valid pixel gives loss 0 (with zero gradients) under
    "mean", where the reference gives NaN: one unlabeled crop then does not
    poison the weights. Callers that must know can count ``label != ignore_index``.
    """
    if logits.ndim != 4 or label.ndim != 3:
        raise ValueError(f"expected (B,K,H,W) logits and (B,H,W) labels, got "
                         f"{tuple(logits.shape)} and {tuple(label.shape)}")
    num_classes = logits.shape[1]
    x = logits.float32()
    label = label.int32()
    valid = (label != ignore_index).float32()
    shift = x.max(dim=1, keepdims=True).detach()
    z = x - shift
    lse = z.exp().sum(dim=1).log()
    classes = jt.arange(num_classes, dtype="int32").reshape((1, num_classes, 1, 1))
    onehot = (classes == label.unsqueeze(1)).float32()
    target = (z * onehot).sum(dim=1)
    loss = (lse - target) * valid
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / jt.maximum(valid.sum(), 1.0)
    raise ValueError(f"unknown reduction {reduction!r}")


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy` (ignore label 255, batch masked mean)."""

    def __init__(self, ignore_index=255, reduction="mean"):
        self.ignore_index = ignore_index
        self.reduction = reduction

    def execute(self, logits, label):
        return cross_entropy(logits, label, self.ignore_index, self.reduction)
