"""Concatenation along one axis, stacking and unstacking, as copies in one kernel each way.

Jittor concatenates by filling a zero tensor and then writing each piece into it (one
single-threaded pass per piece), and the gradient of every slice ``x[i]`` is a zero
tensor of the full size holding that slice. A training step of DFormer makes hundreds
of them: the per-image products of the pooled attention and of the 1x1 convolutions
are taken with ``x[i]`` and put together with ``stack``, and each attention block
concatenates its branches. Here a concatenation is one OpenMP pass of ``memcpy`` rows,
its gradient one split, and the reverse for a split. Only copies: the values, and the
gradients, are those of the plain operators bit for bit.

Every piece is viewed as a 2-D (rows, width) array, rows being the product of the
dimensions before the axis, so one kernel per number of pieces serves every shape.
"""
import functools

import jittor as jt

from ._common import HEADER, fused_for

# Rows are copied in parallel; with fewer rows than this (a stack along axis 0 has one)
# each row's copy is cut into column chunks instead.
_MIN_ROWS = 64
_CHUNKS = 32


@functools.lru_cache(maxsize=None)
def _kernel_src(n, gather):
    """Source copying n pieces (in_i, width w_i) into one (rows, sum w_i) array
    (``gather``) or one array into n pieces (its inverse)."""
    whole, piece = ("out0", "in{i}") if gather else ("in0", "out{i}")
    lines = ["const long long rows = %s_shape0, width = %s_shape1;" % (whole, whole),
             "const long long off0 = 0;"]
    for i in range(1, n):
        prev = piece.format(i=i - 1)
        lines.append(f"const long long off{i} = off{i - 1} + {prev}_shape1;")
    lines += [f"const int chunks = rows >= {_MIN_ROWS} ? 1 : {_CHUNKS};",
              "#pragma omp parallel for collapse(2) schedule(static)",
              "for (long long r = 0; r < rows; r++)",
              "for (int c = 0; c < chunks; c++) {"]
    for i in range(n):
        p = piece.format(i=i)
        dst, src = (f"{whole}_p + r * width + off{i} + lo", f"{p}_p + r * w + lo") if gather \
            else (f"{p}_p + r * w + lo", f"{whole}_p + r * width + off{i} + lo")
        lines += ["    {",
                  f"        const long long w = {p}_shape1, lo = w * c / chunks, "
                  f"hi = w * (c + 1) / chunks;",
                  f"        if (hi > lo) std::memcpy({dst}, {src}, sizeof(float) * (hi - lo));",
                  "    }"]
    lines.append("}")
    return "\n".join(lines)


def _gather(pieces):
    rows = pieces[0].shape[0]
    width = sum(int(p.shape[1]) for p in pieces)
    return jt.code((rows, width), pieces[0].dtype, list(pieces), cpu_header=HEADER,
                   cpu_src=_kernel_src(len(pieces), gather=True))


def _scatter(whole, widths):
    rows = whole.shape[0]
    outs = jt.code([(rows, w) for w in widths], [whole.dtype] * len(widths), [whole],
                   cpu_header=HEADER, cpu_src=_kernel_src(len(widths), gather=False))
    return list(outs)


class _FusedConcat(jt.Function):
    """2-D pieces side by side; the gradient is the split of the output's gradient."""

    def execute(self, *pieces):
        self.widths = [int(p.shape[1]) for p in pieces]
        return _gather(pieces)

    def grad(self, g):
        return tuple(_scatter(g, self.widths))


class _FusedSplit(jt.Function):
    """A 2-D array cut into column blocks; the gradient puts the blocks' gradients back
    side by side (zeros for a block whose output was not used)."""

    def __init__(self, widths):
        self.widths = [int(w) for w in widths]

    def execute(self, whole):
        self.rows, self.dtype = whole.shape[0], whole.dtype
        return tuple(_scatter(whole, self.widths))

    def grad(self, *grads):
        grads = [g if g is not None else jt.zeros((self.rows, w), self.dtype)
                 for g, w in zip(grads, self.widths)]
        return _gather(grads)


def _axis(ndim, axis):
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for {ndim} dimensions")
    return axis % ndim


def _rows(shape, axis):
    rows = 1
    for s in shape[:axis]:
        rows *= int(s)
    return rows


def can_use(*tensors):
    return fused_for(*tensors) and len(tensors) > 0


def concat_plain(xs, axis):
    return jt.concat(list(xs), dim=axis)


def concat(xs, axis=0):
    """``jt.concat(xs, axis)``; tensors of the same rank agreeing on every other axis."""
    xs = list(xs)
    if len(xs) == 1:
        return xs[0]
    if not can_use(*xs):
        return concat_plain(xs, axis)
    ax = _axis(xs[0].ndim, axis)
    shape = list(xs[0].shape)
    for x in xs[1:]:
        if x.ndim != len(shape) or any(int(a) != int(b) for d, (a, b) in
                                       enumerate(zip(x.shape, shape)) if d != ax):
            raise ValueError(f"cannot concatenate shapes {list(xs[0].shape)} and "
                             f"{list(x.shape)} along axis {axis}")
    rows = _rows(shape, ax)
    out = _FusedConcat()(*[x.reshape((rows, -1)) for x in xs])
    shape[ax] = sum(int(x.shape[ax]) for x in xs)
    return out.reshape(shape)


def stack(xs):
    """``jt.stack(xs, 0)`` of tensors of one shape."""
    xs = list(xs)
    if len(xs) == 1:
        return xs[0].unsqueeze(0)
    if not can_use(*xs):
        return jt.stack(xs, 0)
    shape = list(xs[0].shape)
    if any(list(x.shape) != shape for x in xs):
        raise ValueError(f"cannot stack shapes {sorted(set(tuple(x.shape) for x in xs))}")
    return _FusedConcat()(*[x.reshape((1, -1)) for x in xs]).reshape([len(xs)] + shape)


def unstack(x):
    """``[x[i] for i in range(len(x))]``."""
    n, shape = int(x.shape[0]), list(x.shape[1:])
    if n == 1:
        return [x.reshape(shape)]
    if not can_use(x):
        return [x[i] for i in range(n)]
    pieces = _FusedSplit([x.numel() // n] * n)(x.reshape((1, -1)))
    return [p.reshape(shape) for p in pieces]
