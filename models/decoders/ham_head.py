"""LightHamHead: the Hamburger (NMF) decode head used by every DFormer config.

Reference: "Is Attention Better Than Matrix Decomposition?" (HamNet,
https://arxiv.org/abs/2109.04553). This module also holds the pieces shared by
the mmseg-style heads (``BaseDecodeHead``) and the decoder initialisation.
"""
import numpy as np
import jittor as jt
from jittor import nn, init

from ..errors import ConfigError
from ..layers import BatchNorm2d, Conv2d, ConvModule, Dropout2d
from ..ops import concat, resize, softmax, stack, unstack

__all__ = ["BaseDecodeHead", "NMF2D", "Hamburger", "LightHamHead",
           "init_decoder_weights", "configure_norms"]


def configure_norms(module, eps=None, momentum=None, sync=None):
    """Set ``eps`` / ``momentum`` / ``sync`` of every BatchNorm2d inside ``module``."""
    for m in module.modules():
        if isinstance(m, BatchNorm2d):
            if eps is not None:
                m.eps = eps
            if momentum is not None:
                m.momentum = momentum
            if sync is not None:
                m.sync = sync
    return module


def init_decoder_weights(module, bn_eps=None, bn_momentum=None):
    """Decoder initialisation of the reference builder.

    Every Conv2d weight: Kaiming normal (fan_in, ReLU gain). Every BatchNorm2d:
    weight 1, bias 0 (and ``eps`` / ``momentum`` when given). Linear layers and
    plain conv biases keep their default init; biases of convs inside a
    ``ConvModule`` start at 0, as mmcv's ConvModule initialises them.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            init.kaiming_normal_(m.weight, a=0, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, BatchNorm2d):
            m.weight.assign(jt.ones(m.weight.shape, dtype=m.weight.dtype))
            m.bias.assign(jt.zeros(m.bias.shape, dtype=m.bias.dtype))
        elif isinstance(m, ConvModule) and m.conv.bias is not None:
            m.conv.bias.assign(jt.zeros(m.conv.bias.shape, dtype=m.conv.bias.dtype))
    configure_norms(module, eps=bn_eps, momentum=bn_momentum)
    return module


class BaseDecodeHead(nn.Module):
    """Common part of the mmseg-style heads (LightHamHead, NLHead).

    Creates the classifier ``conv_seg`` (1x1 conv with bias) and the channel
    dropout first, so they lead the state dict as in the reference.

    Args:
        in_channels (int | Sequence[int]): channels of the selected inputs.
        channels (int): width entering ``conv_seg``.
        num_classes (int): number of output classes.
        in_index (int | Sequence[int]): which backbone outputs are used (ints: one).
        dropout_ratio (float): Dropout2d probability before ``conv_seg``.
        bn_eps, bn_momentum (float): BatchNorm settings of the head.
        sync_bn (bool): synchronise BN statistics across MPI processes.
        align_corners (bool): bilinear resizing mode of the inputs.
    """

    def __init__(self, in_channels, channels, num_classes, in_index=(1, 2, 3),
                 dropout_ratio=0.1, bn_eps=1e-3, bn_momentum=0.1, sync_bn=True,
                 align_corners=False):
        if isinstance(in_channels, int) != isinstance(in_index, int):
            raise ConfigError(f"{type(self).__name__}: in_channels and in_index must both be ints "
                              "(one input) or both lists")
        # an int pair is mmseg's single input: feats[in_index], a one-map "concatenation"
        self.in_channels = [in_channels] if isinstance(in_channels, int) else list(in_channels)
        self.in_index = [in_index] if isinstance(in_index, int) else list(in_index)
        if len(self.in_channels) != len(self.in_index):
            raise ConfigError(f"{type(self).__name__}: {len(self.in_channels)} in_channels for "
                              f"{len(self.in_index)} in_index entries")
        self.channels = channels
        self.num_classes = num_classes
        self.dropout_ratio = dropout_ratio
        self.bn_eps = bn_eps
        self.bn_momentum = bn_momentum
        self.sync_bn = sync_bn
        self.align_corners = align_corners
        self.conv_seg = Conv2d(channels, num_classes, 1)
        self.dropout = Dropout2d(dropout_ratio, is_train=True) if dropout_ratio > 0 else None

    def _conv_module(self, in_channels, out_channels, kernel_size=1, norm=True, act="relu"):
        """ConvModule carrying the head's BN settings."""
        m = ConvModule(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                       norm=norm, act=act, bn_eps=self.bn_eps)
        return configure_norms(m, momentum=self.bn_momentum, sync=self.sync_bn)

    def fuse_inputs(self, feats):
        """Select ``in_index`` from ``feats``, resize to the first one, concatenate."""
        xs = [feats[i] for i in self.in_index]
        size = xs[0].shape[2:]
        xs = [resize(x, size, align_corners=self.align_corners) for x in xs]
        return concat(xs, 1)

    def cls_seg(self, x):
        """Dropout2d (training only) then the 1x1 classifier."""
        if self.dropout is not None:
            x = self.dropout(x)
        return self.conv_seg(x)

    def init_weights(self):
        """Reference decoder init (see :func:`init_decoder_weights`)."""
        return init_decoder_weights(self, self.bn_eps, self.bn_momentum)


class NMF2D(nn.Module):
    """Spatial non-negative matrix factorisation by multiplicative updates.

    The input (B, C, H, W) is viewed as B*S matrices x of shape (D, N), D = C/S,
    N = H*W. Bases (D, R) are drawn U[0, 1) at every call and L2-normalised over
    D (norm clamped at 1e-12); coefficients start as softmax(inv_t * x^T bases)
    over R. Then ``train_steps`` (training) or ``eval_steps`` (eval) rounds
    update the coefficients and then the bases, and a last round updates the
    coefficients only; the output is bases @ coef^T reshaped to (B, C, H, W).
    Every update divides by (denominator + 1e-6). Gradients flow through all
    rounds.

    Attributes:
        fixed_bases (numpy.ndarray | None): when set, a float array of shape
            (B*S, D, R) used instead of the random draw. It is taken as drawn,
            i.e. BEFORE normalisation: the module still normalises it. Used for
            reproducible runs and parity tests. Default None (random bases).

    The products are done per matrix as 2-D matmuls (oneDNN / cuBLAS GEMMs).
    """

    def __init__(self, S=1, R=64, train_steps=6, eval_steps=7, inv_t=1, eps=1e-6):
        self.S = S
        self.R = R
        self.train_steps = train_steps
        self.eval_steps = eval_steps
        self.inv_t = inv_t
        self.eps = eps
        self.fixed_bases = None

    def draw_bases(self, n, d, dtype="float32"):
        """(n, d, R) bases: the random U[0,1) draw (or ``fixed_bases``), L2-normalised over d
        in ``dtype`` (the input's)."""
        if self.fixed_bases is not None:
            fixed = np.asarray(self.fixed_bases, dtype=np.float32)
            if fixed.shape != (n, d, self.R):
                raise ValueError(f"fixed_bases has shape {fixed.shape}, expected {(n, d, self.R)}")
            bases = jt.array(fixed)
        else:
            bases = jt.rand((n, d, self.R), dtype="float32", requires_grad=False)
        bases = bases.cast(dtype)
        norm = jt.sqrt((bases * bases).sum(dim=1, keepdims=True))
        return (bases / jt.maximum(norm, 1e-12)).stop_grad()

    def _update_coef(self, xtb, bases, coef):
        """coef * (x^T bases) / (coef (bases^T bases) + eps)."""
        den = jt.matmul(coef, jt.matmul(bases.transpose(), bases))
        return coef * xtb / (den + self.eps)

    def _factorise(self, x, bases, steps):
        """Factorise one (D, N) matrix; returns the (D, N) reconstruction."""
        xt = x.transpose()                                  # (N, D)
        xtb = jt.matmul(xt, bases)                          # (N, R)
        logits = xtb if self.inv_t == 1 else xtb * self.inv_t
        coef = softmax(logits, dim=-1)                      # over R
        for _ in range(steps):
            coef = self._update_coef(xtb, bases, coef)
            num = jt.matmul(x, coef)                        # (D, R)
            den = jt.matmul(bases, jt.matmul(coef.transpose(), coef))
            bases = bases * num / (den + self.eps)
            xtb = jt.matmul(xt, bases)
        coef = self._update_coef(xtb, bases, coef)
        return jt.matmul(bases, coef.transpose())

    def execute(self, x):
        b, c, h, w = x.shape
        n, d = b * self.S, c // self.S
        mats = x.reshape((n, d, h * w))
        bases = self.draw_bases(n, d, str(x.dtype))
        steps = self.train_steps if self.is_training() else self.eval_steps
        outs = [self._factorise(m, bi, steps) for m, bi in zip(unstack(mats), unstack(bases))]
        return stack(outs).reshape((b, c, h, w))

    def extra_repr(self):
        return (f"S={self.S}, R={self.R}, train_steps={self.train_steps}, "
                f"eval_steps={self.eval_steps}, inv_t={self.inv_t}")


class Hamburger(nn.Module):
    """ham_in (1x1 conv, bias) -> ReLU -> NMF2D -> ham_out (1x1 conv + BN); residual, ReLU."""

    def __init__(self, ham_channels=512, bn_eps=1e-3, bn_momentum=0.1, sync_bn=True,
                 **nmf_kwargs):
        self.ham_in = ConvModule(ham_channels, ham_channels, 1, norm=False, act=None)
        self.ham = NMF2D(**nmf_kwargs)
        self.ham_out = configure_norms(
            ConvModule(ham_channels, ham_channels, 1, act=None, bn_eps=bn_eps),
            momentum=bn_momentum, sync=sync_bn)

    def execute(self, x):
        y = nn.relu(self.ham_in(x))
        y = self.ham_out(self.ham(y))
        return nn.relu(x + y)


class LightHamHead(BaseDecodeHead):
    """Light Hamburger decode head.

    Backbone outputs ``in_index`` are resized (bilinear) to the first selected
    one (stride 8), concatenated, squeezed to ``ham_channels`` by a 1x1
    ConvModule, passed through the Hamburger, projected to ``channels`` by
    ``align`` and classified by ``conv_seg``. ``execute(feats)`` takes the full
    list of 4 backbone features and returns logits at the stride-8 size.

    Args:
        in_channels (Sequence[int]): channels of the selected features.
        num_classes (int): number of classes.
        channels (int): width after ``align`` (config ``decoder_embed_dim``).
        ham_channels (int): width of the Hamburger (512 in every config).
        nmf_kwargs (dict | None): NMF2D settings (S, R, train_steps,
            eval_steps, inv_t); the defaults are the reference's.
        Others: see :class:`BaseDecodeHead`. ``bn_eps`` defaults to 1e-3, the
        value the reference sets at init (``cfg.bn_eps``).

    Use ``head.hamburger.ham.fixed_bases`` to fix the NMF bases.
    """

    def __init__(self, in_channels, num_classes, channels=512, in_index=(1, 2, 3),
                 ham_channels=512, dropout_ratio=0.1, bn_eps=1e-3, bn_momentum=0.1,
                 sync_bn=True, align_corners=False, nmf_kwargs=None):
        super().__init__(in_channels, channels, num_classes, in_index=in_index,
                         dropout_ratio=dropout_ratio, bn_eps=bn_eps, bn_momentum=bn_momentum,
                         sync_bn=sync_bn, align_corners=align_corners)
        self.ham_channels = ham_channels
        self.squeeze = self._conv_module(sum(self.in_channels), ham_channels, 1)
        self.hamburger = Hamburger(ham_channels, bn_eps=bn_eps, bn_momentum=bn_momentum,
                                   sync_bn=sync_bn, **(nmf_kwargs or {}))
        self.align = self._conv_module(ham_channels, channels, 1)

    def execute(self, feats):
        x = self.squeeze(self.fuse_inputs(feats))
        x = self.hamburger(x)
        return self.cls_seg(self.align(x))
