"""The RGB-D segmentor: backbone + decode head (+ optional auxiliary head)."""
import os

import numpy as np
from jittor import nn

from .encoders import build_backbone
from .decoders import build_decode_head
from .ops import resize, scalar
from .losses import CrossEntropyLoss


class EncoderDecoder(nn.Module):
    """Backbone -> decode head -> bilinear upsampling to the input size.

    ``execute(rgb, depth)`` returns logits (B, num_classes, H, W);
    ``execute(rgb, depth, label)`` returns the training loss (cross-entropy over
    valid pixels, ignore index ``cfg.background``, plus ``aux_rate`` times the
    auxiliary head's loss when the config has one).

    The state dict uses the official key names (``backbone.*``, ``decode_head.*``,
    ``aux_head.*``), so official PyTorch checkpoints load unchanged.
    """

    def __init__(self, cfg, load_pretrained=True, sync_bn=True):
        super().__init__()
        drop_path = cfg.get("drop_path_rate")
        self.backbone = build_backbone(cfg.backbone, drop_path_rate=0.1 if drop_path is None else drop_path,
                                       sync_bn=sync_bn)
        self.decode_head, self.aux_head, self.aux_rate = build_decode_head(
            cfg, list(self.backbone.out_channels), sync_bn=sync_bn)
        self.criterion = CrossEntropyLoss(ignore_index=cfg.get("background", 255))
        self.float_dtype = "float32"    # of the parameters; inputs are cast to it
        self.init_weights(cfg.get("pretrained_model") if load_pretrained else None)

    def init_weights(self, pretrained=None):
        """Fresh initialisation, then the ImageNet-pretrained backbone when a path is given.

        A path that does not exist is an error: training silently from random weights
        would be a much worse surprise than a message.
        """
        self.backbone.init_weights()
        for head in (self.decode_head, self.aux_head):
            if head is not None:
                head.init_weights()
        if pretrained:
            from utils.checkpoint import load_pretrained_backbone
            if not os.path.isfile(pretrained):
                raise FileNotFoundError(
                    f"Pretrained backbone not found: {pretrained}. Download the official "
                    "ImageNet-pretrained file into checkpoints/pretrained/ (see README), or set "
                    "C.pretrained_model = None in the config to train from scratch.")
            self.pretrained_report = load_pretrained_backbone(self.backbone, pretrained)

    def to_dtype(self, dtype):
        """Cast every floating parameter and buffer to ``dtype`` ("float32" or "float64").

        float64 is the verification path (tests/test_train_parity.py): the forward, the loss,
        the optimiser and the schedule follow the parameters' dtype, and the fused CPU
        kernels, float32-only, step aside for the plain operators.
        """
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', not {dtype!r}")
        self.float_dtype = dtype
        for var in self.state_dict().values():
            if var.dtype.is_float() and str(var.dtype) != dtype:
                stopped = var.is_stop_grad()
                var.assign(var.cast(dtype))
                if stopped:
                    var.stop_grad()
        return self

    def checkpoint_filter(self, state_dict):
        """The backbone's and the decode head's checkpoint filters on their keys (see
        utils.checkpoint); the PointRend head's maps mmseg's cascade layout."""
        harmless = []
        for name, part in (("backbone", self.backbone), ("decode_head", self.decode_head)):
            if hasattr(part, "checkpoint_filter"):
                state_dict, dropped = part.checkpoint_filter(state_dict, prefix=name + ".")
                harmless += dropped
        return state_dict, harmless

    def set_nmf_bases(self, bases):
        """Use fixed (un-normalised) NMF bases instead of a random draw per forward.

        ``bases``: array (B*S, D, R) or None to restore the random draw. The reference
        draws new bases at every forward, so its output is stochastic; fixed bases make
        results reproducible (tests, parity checks).
        """
        found = False
        for _, module in self.named_modules():
            if hasattr(module, "fixed_bases"):
                module.fixed_bases = None if bases is None else np.asarray(bases, dtype=np.float32)
                found = True
        if not found:
            raise ValueError("This model has no NMF module (decoder is not 'ham').")

    def encode_decode(self, rgb, depth):
        feats = self.backbone(rgb, depth)
        out = resize(self.decode_head(feats), rgb.shape[-2:])
        aux = None
        if self.aux_head is not None:
            aux = resize(self.aux_head(feats), rgb.shape[-2:])     # picks its own stage
        return out, aux

    def execute(self, rgb, depth, label=None):
        if depth is None:
            raise ValueError("DFormer needs a depth input; pass zeros for an RGB-only run.")
        if self.float_dtype != "float32":  # the data path gives float32 images
            rgb, depth = rgb.cast(self.float_dtype), depth.cast(self.float_dtype)
        out, aux = self.encode_decode(rgb, depth)
        if label is None:
            return out
        loss = self.criterion(out, label)
        extra_loss = getattr(self.decode_head, "extra_loss", None)
        if extra_loss is not None:  # e.g. the PointRend point loss
            loss = loss + extra_loss(label)
        if aux is not None and self.aux_rate:
            # aux_rate as a constant of the loss's dtype (a Python float is float32 in Jittor)
            loss = loss + scalar(self.aux_rate, loss) * self.criterion(aux, label)
        return loss


def build_model(cfg, checkpoint=None, strict=True, sync_bn=True, dtype="float32"):
    """Build the segmentor of ``cfg`` and load ``checkpoint`` (official ``.pth`` or ours).

    With a checkpoint the ImageNet-pretrained backbone file is not needed (the trained
    weights replace it), unlike the reference which always reads it. ``dtype="float64"``
    gives the verification path (:meth:`EncoderDecoder.to_dtype`).
    """
    model = EncoderDecoder(cfg, load_pretrained=checkpoint is None, sync_bn=sync_bn)
    if checkpoint is not None:
        from utils.checkpoint import load_trained_weights
        model.load_report = load_trained_weights(model, checkpoint, strict=strict)
    return model.to_dtype(dtype)
