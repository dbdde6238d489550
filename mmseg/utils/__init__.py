"""Dataset class names and palettes, as mmseg's ``mmseg.utils`` offers them.

Both :mod:`mmseg.apis` and :mod:`mmseg.visualization` read them from here, so neither
package imports the other's internals (the APIs use the visualizer, never the reverse).
"""
__all__ = ["dataset_meta", "get_classes", "get_palette", "DATASET_CONFIGS"]

# Config whose classes and palette stand for each dataset name.
DATASET_CONFIGS = {"NYUDepthv2": "local_configs.NYUDepthv2.DFormer_Tiny",
                   "SUNRGBD": "local_configs.SUNRGBD.DFormer_Tiny",
                   "SynthRGBD": "local_configs.SynthRGBD.DFormer_Tiny"}


def dataset_meta(cfg):
    """mmseg's ``{'classes': tuple, 'palette': [[r, g, b], ...]}`` of an internal config."""
    from utils.visualize import get_palette as config_palette
    n = int(cfg.num_classes)
    names = cfg.get("class_names") or [f"class_{i}" for i in range(n)]
    palette = config_palette(cfg)[:n].tolist()
    return {"classes": tuple(names), "palette": [list(map(int, c)) for c in palette]}


def _named_meta(dataset):
    from utils.config import load_config
    from utils.errors import ConfigError
    if dataset not in DATASET_CONFIGS:
        raise ConfigError(f"unknown dataset_name {dataset!r}; known: {', '.join(DATASET_CONFIGS)}")
    return dataset_meta(load_config(DATASET_CONFIGS[dataset]))


def get_classes(dataset):
    """Class names of a dataset name ('NYUDepthv2', 'SUNRGBD', 'SynthRGBD')."""
    return list(_named_meta(dataset)["classes"])


def get_palette(dataset):
    """RGB palette (list of [r, g, b]) of a dataset name."""
    return _named_meta(dataset)["palette"]
