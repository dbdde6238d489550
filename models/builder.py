"""The RGB-D segmentor: backbone + decode head (+ optional auxiliary head)."""
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

    Built with fresh weights; files are read by ``utils.checkpoint``: its ``build_model``
    loads a trained checkpoint or the config's ImageNet-pretrained backbone
    (``cfg.pretrained_model``), as every entry point does.
    """

    def __init__(self, cfg, sync_bn=True):
        super().__init__()
        drop_path = cfg.get("drop_path_rate")
        self.backbone = build_backbone(cfg.backbone, drop_path_rate=0.1 if drop_path is None else drop_path,
                                       sync_bn=sync_bn)
        self.decode_head, self.aux_head, self.aux_rate = build_decode_head(
            cfg, list(self.backbone.out_channels), sync_bn=sync_bn)
        self.criterion = CrossEntropyLoss(ignore_index=cfg.get("background", 255))
        self.float_dtype = "float32"    # of the parameters; inputs are cast to it
        self.init_weights()

    def init_weights(self):
        """Fresh initialisation of the backbone and the heads."""
        self.backbone.init_weights()
        for head in (self.decode_head, self.aux_head):
            if head is not None:
                head.init_weights()

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

    def checkpoint_key_map(self):
        """(checkpoint prefix, model prefix) pairs that rename other layouts' keys on load
        (``utils.checkpoint``): the decode head's (PointRend: mmseg's cascade layout)."""
        key_map = getattr(self.decode_head, "checkpoint_key_map", None)
        return key_map("decode_head.") if key_map is not None else []

    def checkpoint_filter(self, state_dict):
        """The backbone's checkpoint filter on its keys (known harmless extras of released
        checkpoints, see ``utils.checkpoint``)."""
        if hasattr(self.backbone, "checkpoint_filter"):
            return self.backbone.checkpoint_filter(state_dict, prefix="backbone.")
        return state_dict, []

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
