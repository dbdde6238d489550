"""The one config reader used by every entry point.

``load_config(source, cfg_options=None)`` returns the internal (flat, EasyDict) config
for a ``local_configs`` dotted name, a ``local_configs/.../*.py`` path, or (issue 9) an
mmengine-style ``configs/**.py`` file, with ``--cfg-options`` applied.
"""
from utils.errors import ConfigError

__all__ = ["ConfigError", "load_config"]


def load_config(source, cfg_options=None):
    """Internal config of ``source`` with ``cfg_options`` (``["key=value", ...]`` or a dict) applied."""
    import local_configs
    try:
        cfg = local_configs.load_config(source)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg_options:
        from utils.api import override_config
        options = cfg_options if not isinstance(cfg_options, dict) else \
            [f"{k}={v!r}" for k, v in cfg_options.items()]
        try:
            override_config(cfg, options)
        except ValueError as exc:
            raise ConfigError(f"--cfg-options: {exc}") from None
    return cfg
