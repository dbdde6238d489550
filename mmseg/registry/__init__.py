"""Registries with mmseg's names. The ``type=`` strings of mmengine-style configs
(``configs/**.py``) resolve through them to this project's own components.

``MODELS`` knows the segmentor (``EncoderDecoder``), the backbones (``DFormer``,
``DFormerv2`` and one name per variant), every decode head (``LightHamHead``,
``PSAHead``, ``CCHead``, ``PointHead``, ...), the data pre-processor and the loss;
``DATASETS`` the dataset types; ``METRICS``, ``VISUALIZERS`` and ``TRANSFORMS`` the
rest (pipeline steps only refuse to build: the data pipeline is fixed). ``build`` hands
every key to the component by name: a key it does not take, or a value it cannot
honour, is a one-line ConfigError naming the key. Entries carry the internal names the
flat configs use: :func:`decoder_name` (``type`` -> ``C.decoder``) and
:func:`backbone_name` (``type`` + ``arch`` -> ``C.backbone``), :func:`dataset_name`
(``type`` -> ``C.dataset_name``).
"""
from .registry import (DATASETS, HOOKS, METRICS, MODELS, TRANSFORMS, VISUALIZERS, Registry,
                       backbone_name, dataset_name, decoder_name)

__all__ = ["Registry", "MODELS", "DATASETS", "TRANSFORMS", "METRICS", "VISUALIZERS", "HOOKS",
           "backbone_name", "decoder_name", "dataset_name"]
