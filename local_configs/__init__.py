"""Experiment configs. Each module ``local_configs.<Dataset>.<Model>`` defines an
easydict ``C`` (also bound as ``config``). Importing a config has no side effects."""
import importlib


def load_config(name):
    """Import a config by dotted name (``local_configs.NYUDepthv2.DFormer_Base``) and return a copy of ``C``.

    Also accepts a path such as ``local_configs/NYUDepthv2/DFormer_Base.py``.
    """
    from easydict import EasyDict
    import copy
    import os
    dotted = name
    if name.endswith(".py") or os.sep in name:
        dotted = os.path.normpath(name)[:-3] if name.endswith(".py") else os.path.normpath(name)
        dotted = dotted.replace(os.sep, ".")
    if not dotted.startswith("local_configs."):
        dotted = "local_configs." + dotted
    try:
        module = importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        if exc.name and dotted.startswith(exc.name) or (exc.name or "").startswith("local_configs"):
            raise ValueError(f"Config {name!r} does not exist ({exc}). Available configs: "
                             + ", ".join(list_configs())) from None
        raise
    if not hasattr(module, "C"):
        raise ValueError(f"Config module {dotted} defines no `C`.")
    return EasyDict(copy.deepcopy(dict(module.C)))


def list_configs():
    """Dotted names of every config shipped in local_configs/."""
    import os
    root = os.path.dirname(os.path.abspath(__file__))
    names = []
    for dataset in sorted(os.listdir(root)):
        folder = os.path.join(root, dataset)
        if dataset.startswith("_") or not os.path.isdir(folder):
            continue
        for fname in sorted(os.listdir(folder)):
            if fname.endswith(".py") and not fname.startswith("_"):
                names.append(f"local_configs.{dataset}.{fname[:-3]}")
    return names
