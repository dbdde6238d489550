"""Backbone registry: config ``backbone`` string -> factory."""
from .dformer import dformer_tiny, dformer_small, dformer_base, dformer_large
from .dformerv2 import dformerv2_s, dformerv2_b, dformerv2_l

BACKBONES = {
    "DFormer-Tiny": dformer_tiny,
    "DFormer-Small": dformer_small,
    "DFormer-Base": dformer_base,
    "DFormer-Large": dformer_large,
    "DFormerv2_S": dformerv2_s,
    "DFormerv2_B": dformerv2_b,
    "DFormerv2_L": dformerv2_l,
}


def build_backbone(name, **kwargs):
    """Build the backbone registered as ``name`` (e.g. "DFormer-Base", "DFormerv2_S")."""
    if name not in BACKBONES:
        raise KeyError(f"Unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[name](**kwargs)
