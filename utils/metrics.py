"""Segmentation metrics from a confusion matrix (rows = ground truth, columns = prediction).

Definitions follow the reference's evaluation (one confusion matrix over the split) and add the
usual extras; every value is a percentage:

* ``miou``          mean IoU over *all* classes, a class absent from both ground
                    truth and prediction counting as 0 (the reference's number);
* ``miou_present``  mean IoU over classes present in ground truth or prediction;
* ``macc``          mean per-class accuracy (recall) over all classes, absent = 0
                    (the reference's "macc");
* ``macc_present``  mean per-class accuracy over classes present in ground truth;
* ``pixel_acc``     correctly predicted / labelled pixels;
* ``fwiou``         IoU weighted by each class's share of the labelled pixels;
* ``mf1``           mean per-class F1 over all classes, absent = 0 (reference).

The reference rounds to 2 decimals before comparing runs; values here are not
rounded (the table formatter rounds for display).
"""
import numpy as np

IGNORE_LABEL = 255


def _as_numpy(x):
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()  # jittor.Var and similar
    return np.asarray(x)


def _check_range(values, num_classes, what, ignore_index=None):
    if values.size == 0:
        return
    lo, hi = values.min(), values.max()
    if lo >= 0 and hi < num_classes:
        return
    uniq = np.unique(values)
    bad = uniq[(uniq < 0) | (uniq >= num_classes)]
    allowed = f"0..{num_classes - 1}" + (f" or {ignore_index}" if ignore_index is not None else "")
    raise ValueError(f"{what} contains values {bad[:10].tolist()} outside {allowed}")


def confusion_matrix(pred, label, num_classes, ignore_index=IGNORE_LABEL):
    """int64 ``num_classes x num_classes`` counts of (label, pred) pairs, ignoring ``ignore_index``.

    ``pred`` and ``label`` are integer class maps of the same shape (any shape).
    Raises ValueError on mismatched shapes, non-integer input or out-of-range values.
    """
    pred, label = _as_numpy(pred), _as_numpy(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape} "
                         "(pass class indices, e.g. logits.argmax(1), not logits)")
    for name, arr in (("prediction", pred), ("label", label)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    pred, label = pred.astype(np.int64).ravel(), label.astype(np.int64).ravel()
    keep = label != ignore_index
    _check_range(label[keep], num_classes, "label", ignore_index)
    _check_range(pred, num_classes, "prediction")
    flat = label[keep] * num_classes + pred[keep]
    return np.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes)


class ConfusionMatrix:
    """Accumulates a confusion matrix over many batches."""

    def __init__(self, num_classes, ignore_index=IGNORE_LABEL):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.hist = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred, label):
        """Add a batch of predicted and ground-truth class maps."""
        self.hist += confusion_matrix(pred, label, self.num_classes, self.ignore_index)
        return self

    def merge(self, other):
        """Add another ConfusionMatrix or a raw count matrix (e.g. from another process)."""
        hist = other.hist if isinstance(other, ConfusionMatrix) else _as_numpy(other)
        if hist.shape != self.hist.shape:
            raise ValueError(f"cannot merge a {hist.shape} matrix into {self.hist.shape}")
        self.hist += hist.astype(np.int64)
        return self

    def reset(self):
        self.hist[:] = 0

    def compute(self, class_names=None):
        return compute_metrics(self.hist, class_names)


def _ratio(num, den):
    """Elementwise num/den with NaN where den == 0."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _pct(x):
    """Percent as a JSON-friendly float, None where undefined."""
    x = float(x)
    return None if np.isnan(x) else 100.0 * x


def _mean_zero(values):
    return float(np.nan_to_num(values, nan=0.0).mean()) if values.size else float("nan")


def _mean_present(values):
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else float("nan")


def compute_metrics(hist, class_names=None):
    """All metrics of a confusion matrix as a JSON-serialisable dict (percentages).

    Per-class values are None where undefined (class absent from the relevant
    row/column); summary values are None only when nothing was counted.
    """
    hist = _as_numpy(hist).astype(np.float64)
    n = hist.shape[0]
    if hist.shape != (n, n):
        raise ValueError(f"confusion matrix must be square, got {hist.shape}")
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for {n} classes")
    tp, gt, pr = np.diag(hist), hist.sum(1), hist.sum(0)
    total = hist.sum()
    iou, acc, f1 = _ratio(tp, gt + pr - tp), _ratio(tp, gt), _ratio(2 * tp, gt + pr)
    freq = _ratio(gt, np.full(n, total))
    counted = total > 0
    per_class = [{"class": names[c], "iou": _pct(iou[c]), "acc": _pct(acc[c]), "f1": _pct(f1[c]),
                  "gt_pixels": int(gt[c]), "pred_pixels": int(pr[c])} for c in range(n)]
    return {
        "miou": _pct(_mean_zero(iou)) if counted else None,
        "miou_present": _pct(_mean_present(iou)) if counted else None,
        "macc": _pct(_mean_zero(acc)) if counted else None,
        "macc_present": _pct(_mean_present(acc)) if counted else None,
        "mf1": _pct(_mean_zero(f1)) if counted else None,
        "pixel_acc": _pct(tp.sum() / total) if counted else None,
        "fwiou": _pct(np.nansum(freq * np.nan_to_num(iou))) if counted else None,
        "num_classes": n,
        "num_present": int(np.sum(gt + pr > 0)),
        "labelled_pixels": int(total),
        "per_class": per_class,
    }


def _fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def format_metrics_table(metrics, digits=2):
    """Per-class table (IoU, Acc, F1, pixel counts) followed by the summary lines."""
    from tabulate import tabulate
    rows = [[c["class"], _fmt(c["iou"], digits), _fmt(c["acc"], digits), _fmt(c["f1"], digits),
             c["gt_pixels"], c["pred_pixels"]] for c in metrics["per_class"]]
    table = tabulate(rows, headers=["Class", "IoU", "Acc", "F1", "GT px", "Pred px"],
                     tablefmt="github", disable_numparse=True,
                     colalign=("left",) + ("right",) * 5)
    summary = [
        ("mIoU (all classes, absent = 0)", metrics["miou"]),
        (f"mIoU (present classes, {metrics['num_present']}/{metrics['num_classes']})",
         metrics["miou_present"]),
        ("mAcc (all classes, absent = 0)", metrics["macc"]),
        ("mAcc (classes present in GT)", metrics["macc_present"]),
        ("mF1 (all classes, absent = 0)", metrics["mf1"]),
        ("Pixel accuracy", metrics["pixel_acc"]),
        ("Frequency-weighted IoU", metrics["fwiou"]),
    ]
    lines = [f"{name}: {_fmt(value, digits)}" for name, value in summary]
    return table + "\n" + "\n".join(lines)
