"""Runs a training-parity case (the official code's steps, see tests/test_train_parity.py)
through the project's own training path and returns what the case recorded.

A case (``gen_train_case.py`` beside the full parity set) holds the config, the weight and
data seeds, the schedule and, per step, the batch and the raw NMF bases. Here the model is
built as ``utils/train.py`` builds it (synthetic weights of the case's seed instead of the
ImageNet backbone), with drop path and dropout off as in the case, the optimiser and the
schedule from ``utils/train.py``'s :func:`build_optimisation`, and every step is one
:meth:`Trainer.run_iteration`.

A stochastic case (tests/fixtures/train_parity_stochastic/gen_stochastic_case.py) keeps the
config's drop path and the decode head's dropout on and records the official masks; they are
played back into our modules (:class:`MaskPlayback`), and its batches are those of the
bundled case named by ``inputs_from``.
"""
import contextlib
import hashlib
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


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def read_case(folder):
    with open(os.path.join(folder, "case.json")) as f:
        case = json.load(f)
    source = os.path.join(FIXTURES, case["inputs_from"]) if "inputs_from" in case else folder
    with np.load(os.path.join(source, "inputs.npz")) as data:
        inputs = {k: data[k] for k in data.files}
    if "inputs_digest" in case:
        digest = hashlib.sha256()
        for k in sorted(inputs):
            digest.update(k.encode())
            digest.update(np.ascontiguousarray(inputs[k]).tobytes())
        if digest.hexdigest() != case["inputs_digest"]:
            raise ValueError(f"{source}/inputs.npz is not the batches {folder} was made with")
    return case, inputs


class MaskPlayback:
    """The case's official masks, played back into our DropPath and Dropout2d modules.

    ``masks.npz`` maps an owner (the block holding a DropPath, or the dropout module itself)
    to uint8 (steps, calls per step, B[, C]), 1 = kept. While an owner's module runs, the
    uniform draw it makes returns values that turn into exactly that mask by the module's
    own rule: ``jt.rand`` (ours: kept where u < keep) gives 0 where kept and 1 where
    dropped; ``jt.random`` (Jittor's ``nn.Dropout``/``Dropout2d``: kept where u > p) gives
    1 where kept and 0 where dropped. Our modules' arithmetic runs unchanged.
    """

    def __init__(self, masks):
        self.masks = masks
        self.step, self.calls, self.owner = 0, {}, None

    def attach(self, model, rates):
        """Route every drop-path / dropout module of ``model``; check the drop-path rates
        against the official ones (``rates``: block -> rate)."""
        from models.layers import DropPath
        ours = {}
        for name, module in model.named_modules():
            if isinstance(module, DropPath):
                owner = name.rsplit(".", 1)[0]
                ours[owner] = module.p
            elif isinstance(module, (jt.nn.Dropout, jt.nn.Dropout2d)) and module.p > 0:
                owner = name
                if owner not in self.masks:
                    raise AssertionError(f"{name}: dropout p={module.p} without official masks")
            else:
                continue
            self._route(module, owner)
        if ours != rates:
            diff = {k: (ours.get(k), rates.get(k)) for k in set(ours) | set(rates)
                    if ours.get(k) != rates.get(k)}
            raise AssertionError(f"drop-path rates (ours, official) differ: {diff}")

    def _route(self, module, owner):
        run = module.execute

        def execute(*args, **kwargs):
            outer, self.owner = self.owner, owner
            try:
                return run(*args, **kwargs)
            finally:
                self.owner = outer
        module.execute = execute

    def start_step(self, step):
        self.step, self.calls = step, {}

    def _mask(self, shape):
        k = self.calls.get(self.owner, 0)
        self.calls[self.owner] = k + 1
        recorded = self.masks[self.owner]
        assert k < recorded.shape[1], f"{self.owner}: more draws than the official code"
        mask = recorded[self.step, k]
        assert int(np.prod(shape)) == mask.size, (self.owner, shape, mask.shape)
        return mask.reshape(tuple(shape))

    @contextlib.contextmanager
    def serving(self):
        rand, random = jt.rand, jt.random

        def fake_rand(*size, dtype="float32", requires_grad=True):
            if self.owner is None:
                return rand(*size, dtype=dtype, requires_grad=requires_grad)
            shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
            return jt.array(1 - self._mask(shape), dtype=dtype).stop_grad()

        def fake_random(shape, dtype="float32", type="uniform"):
            if self.owner is None:
                return random(shape, dtype, type)
            return jt.array(self._mask(shape), dtype=dtype).stop_grad()

        jt.rand, jt.random = fake_rand, fake_random
        try:
            yield self
        finally:
            jt.rand, jt.random = rand, random

    def check_step(self):
        """Every owner drew exactly the official number of masks in this step."""
        for owner, recorded in self.masks.items():
            assert self.calls.get(owner, 0) == recorded.shape[1], (
                f"{owner}: {self.calls.get(owner, 0)} draws in step {self.step}, official "
                f"{recorded.shape[1]}")


def case_config(case):
    """The case's config: its lr, its schedule expressed in epochs, its drop-path rate."""
    cfg = load_config("local_configs." + case["config"].replace("/", "."))
    total, warmup = int(case["total_iters"]), int(case["warmup_iters"])
    if warmup < 1 or total % warmup:
        raise ValueError(f"total_iters {total} must be a multiple of warmup_iters {warmup}")
    cfg.niters_per_epoch, cfg.warm_up_epoch, cfg.nepochs = warmup, 1, total // warmup
    cfg.lr = float(case["lr"])
    cfg.drop_path_rate = float(case["drop_path_rate"])
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
    if "masks" not in case:             # the case switches every dropout off
        for module in model.modules():
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
    playback = None
    if "masks" in case:
        with np.load(os.path.join(folder, case["masks"])) as data:
            playback = MaskPlayback({k: data[k] for k in data.files})
    with fused_kernels(fused), playback.serving() if playback else contextlib.nullcontext():
        trainer, model = build_case_trainer(case, dtype, work_dir)
        if playback:
            playback.attach(model, case["drop_path_rates"])
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
            if playback:
                playback.start_step(t)
            model.set_nmf_bases(inputs[f"nmf_bases_{t}"])
            batch = {"rgb": jt.array(inputs[f"rgb_{t}"].astype(dtype)),
                     "depth": jt.array(inputs[f"depth_{t}"].astype(dtype)),
                     "label": jt.array(inputs[f"label_{t}"])}
            if dtype == "float64":
                batch = {k: (v.float64() if k != "label" else v) for k, v in batch.items()}
            losses.append(trainer.run_iteration(batch))
            if playback:
                playback.check_step()
            lrs.append(optimizer.current_lr())
        final = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    groups = [pg.get("names", []) for pg in optimizer.param_groups]
    decay, no_decay = set(groups[0]), set(groups[1]) if len(groups) > 1 else set()
    trainable = {k for k, v in model.state_dict().items() if not v.is_stop_grad()}
    return {"case": case, "losses": losses, "lrs": lrs, "grads0": grads0, "final": final,
            "groups": {"decay": decay, "no_decay": no_decay,
                       "not_optimised": trainable - decay - no_decay}}
