"""Runs a training-parity case (the official code's steps, see tests/test_train_parity.py)
through the project's own training path and returns what the case recorded.

A case (``gen_train_case.py`` beside the full parity set) holds the config, the weight and
data seeds, the schedule and, per step, the batch and the raw NMF bases. Here the model is
built as ``utils/train.py`` builds it (synthetic weights of the case's seed instead of the
ImageNet backbone), with drop path and dropout off as in the case, the optimiser and the
schedule from ``utils/train.py``'s :func:`build_optimisation`, and every step is one
:meth:`Trainer.run_iteration`.
"""
import json
import logging
import os

import numpy as np

import jittor as jt

from local_configs import load_config
from models.builder import EncoderDecoder
from models.ops import fused_kernels
from parity_fixtures import bundled_manifest, synthetic_weights
from utils.checkpoint import load_state_dict
from utils.engine.logger import NullWriter
from utils.engine.trainer import TrainOptions, Trainer
from utils.train import build_optimisation


def read_case(folder):
    with open(os.path.join(folder, "case.json")) as f:
        case = json.load(f)
    with np.load(os.path.join(folder, "inputs.npz")) as data:
        inputs = {k: data[k] for k in data.files}
    return case, inputs


def case_config(case):
    """The case's config: its lr, its schedule expressed in epochs, drop path off."""
    cfg = load_config("local_configs." + case["config"].replace("/", "."))
    total, warmup = int(case["total_iters"]), int(case["warmup_iters"])
    if warmup < 1 or total % warmup:
        raise ValueError(f"total_iters {total} must be a multiple of warmup_iters {warmup}")
    cfg.niters_per_epoch, cfg.warm_up_epoch, cfg.nepochs = warmup, 1, total // warmup
    cfg.lr = float(case["lr"])
    cfg.drop_path_rate = 0.0
    cfg.aux_rate = float(case.get("aux_rate", cfg.aux_rate))
    return cfg


def case_weights(case):
    """The case's initial weights: the manifest entry's synthetic weights, plus the tensors
    the case appends to the entry (the auxiliary head of ``gen_aux_case.py``)."""
    entry = dict(bundled_manifest()["configs"][case["config"]])
    entry["state_dict"] = entry["state_dict"] + case.get("extra_state_dict", [])
    entry["state_dict_info"] = entry["state_dict_info"] + case.get("extra_state_dict_info", [])
    return synthetic_weights(entry, int(case["weight_seed"]))


def build_case_trainer(case, dtype, work_dir):
    """(trainer, model) for ``case`` in ``dtype``, as utils/train.py wires them."""
    cfg = case_config(case)
    assert abs(float(cfg.weight_decay) - float(case["weight_decay"])) == 0.0
    assert float(cfg.lr_power) == float(case["lr_power"])
    model = EncoderDecoder(cfg, sync_bn=bool(case.get("syncbn", True)))
    load_state_dict(model, case_weights(case), strict=True,
                    source=f"synthetic weights ({case['config']})")
    model.to_dtype(dtype)
    for module in model.modules():      # the case switches every dropout off
        if isinstance(module, (jt.nn.Dropout, jt.nn.Dropout2d)):
            module.p = 0.0
    model.train()
    logger = logging.getLogger("dformer.train_parity")
    optimizer, schedule = build_optimisation(cfg, model, logger, 1)
    opts = TrainOptions(progress=False, seed=0)
    trainer = Trainer(cfg, model, optimizer, schedule, None, None, work_dir, opts, logger,
                      NullWriter())
    return trainer, model


def run_case(folder, dtype="float32", fused=True, work_dir=None):
    """Run the case's steps; returns a dict of losses, lrs, groups, step-0 grads, final state."""
    case, inputs = read_case(folder)
    with fused_kernels(fused):
        trainer, model = build_case_trainer(case, dtype, work_dir)
        optimizer = trainer.optimizer
        names = {id(v): k for k, v in model.state_dict().items()}
        grads0, real_step = {}, optimizer.step

        def step_recording_grads(*args, **kwargs):
            # observe the gradients of the first step before the optimiser consumes them
            if not grads0:
                for pg in optimizer.param_groups:
                    for p, g in zip(pg["params"], pg["grads"]):
                        grads0[names[id(p)]] = g.numpy().copy()
            return real_step(*args, **kwargs)

        optimizer.step = step_recording_grads
        losses, lrs = [], []
        for t in range(int(case["steps"])):
            model.set_nmf_bases(inputs[f"nmf_bases_{t}"])
            batch = {"rgb": jt.array(inputs[f"rgb_{t}"].astype(dtype)),
                     "depth": jt.array(inputs[f"depth_{t}"].astype(dtype)),
                     "label": jt.array(inputs[f"label_{t}"])}
            if dtype == "float64":
                batch = {k: (v.float64() if k != "label" else v) for k, v in batch.items()}
            losses.append(trainer.run_iteration(batch))
            lrs.append(optimizer.current_lr())
        final = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    groups = [pg.get("names", []) for pg in optimizer.param_groups]
    decay, no_decay = set(groups[0]), set(groups[1]) if len(groups) > 1 else set()
    trainable = {k for k, v in model.state_dict().items() if not v.is_stop_grad()}
    return {"case": case, "losses": losses, "lrs": lrs, "grads0": grads0, "final": final,
            "groups": {"decay": decay, "no_decay": no_decay,
                       "not_optimised": trainable - decay - no_decay}}
