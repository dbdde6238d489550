"""Training: parameter groups, optimiser maths, lr schedule, checkpoints, exact resume.

Fast tests use a toy model and loader in-process; the end-to-end tests train DFormer-Tiny
on a tiny synthetic dataset (64x64) in subprocesses, exactly as ``utils/train.py`` runs
(tests/test_mpi.py runs the same under ``mpirun``).
"""
import glob
import json
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from easydict import EasyDict

import jittor as jt
from jittor import nn

from local_configs import load_config
from local_configs._base_ import dataset_paths, finalize
from models.layers import BatchNorm2d, DropPath
from utils.checkpoint import CheckpointError, read_checkpoint
from utils.errors import ConfigError
from utils.engine.logger import NullWriter, get_logger
from utils.engine.optim import (SGDM, AdamW, WarmUpPolyLR, build_optimizer, group_parameters)
from utils.engine.trainer import (NonFiniteLossError, TrainOptions, Trainer, ZeroDepth,
                                  reference_val_due, seed_iteration)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
HERE = osp.dirname(osp.abspath(__file__))


# ============================================================================ helpers

def tiny_cfg(root, backbone="DFormer_Tiny", size=64, ntrain=4, nval=2, batch=2, epochs=2):
    """SynthRGBD config shrunk to ``size`` x ``size`` images under ``root``."""
    cfg = load_config(f"local_configs.SynthRGBD.{backbone}")
    cfg.root_dir = str(root)
    dataset_paths(cfg, "SynthRGBD", label_folder="Label")
    cfg.rgb_format = ".png"
    cfg.num_train_imgs, cfg.num_eval_imgs = ntrain, nval
    cfg.image_height = cfg.image_width = size
    cfg.synthetic_size = (size, size)
    cfg.eval_crop_size = [size, size]
    cfg.batch_size, cfg.nepochs, cfg.num_workers = batch, epochs, 0
    finalize(cfg)
    return cfg


RUNNER = '''"""Runs utils/train.py's main() on the tiny test config (see tests/test_train.py)."""
import json, sys
from utils import runtime; runtime.setup()
import numpy as np
import jittor as jt
from jittor import nn
from test_train import tiny_cfg
from models.layers import BatchNorm2d
from utils.train import build_parser, build_trainer, main

root, overrides, exact = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "exact"
args = sys.argv[4:]
halves = overrides.pop("halves", False)
nan_at = overrides.pop("nan_at", None)  # (rank, iteration): that rank's loss becomes NaN
raise_at = overrides.pop("raise_at", None)  # (rank, iteration): that rank's forward raises
size_keys = ("ntrain", "nval", "epochs", "size")
cfg = tiny_cfg(root, **{k: overrides.pop(k) for k in size_keys if k in overrides})
cfg.update(overrides)
if nan_at is not None or raise_at is not None:
    from models.builder import EncoderDecoder
    forward, steps = EncoderDecoder.execute, []

    def execute(self, rgb, depth, label=None):
        out = forward(self, rgb, depth, label)
        if label is not None:  # a training step
            steps.append(len(steps))
            here = [jt.rank if jt.in_mpi else 0, steps[-1]]
            if here == nan_at:
                out = out * float("nan")
            if here == raise_at:
                raise RuntimeError(f"planted failure on rank {here[0]} at iteration {here[1]}")
        return out

    EncoderDecoder.execute = execute
if not exact:
    from utils.errors import run_cli
    run_cli(lambda argv: main(argv, cfg=cfg), args)
# Deterministic per-sample computation (for 1 vs N processes): every BN synchronised
# (none with --no-syncbn), no dropout, the same fixed NMF bases for every sample.
trainer, (resume, state) = build_trainer(build_parser().parse_args(args), cfg)
for m in trainer.model.modules():
    if isinstance(m, BatchNorm2d):
        m.sync = "--no-syncbn" not in args
    if isinstance(m, nn.Dropout2d):
        m.p = 0.0
bases = np.random.default_rng(0).random((1, 512, 64)).astype(np.float32)
local = cfg.batch_size // (jt.world_size if jt.in_mpi else 2 if halves else 1)


class Halves(nn.Module):
    """What 2 ranks without SyncBN compute, in one process: each half of the batch
    normalised on its own, the mean of the two losses (so of their gradients)."""

    def __init__(self, model):
        self.model = model

    def execute(self, rgb, depth, label):
        n = rgb.shape[0] // 2
        return (self.model(rgb[:n], depth[:n], label[:n])
                + self.model(rgb[n:], depth[n:], label[n:])) / 2


if halves:
    trainer.forward_model = Halves(trainer.model)
trainer.model.set_nmf_bases(np.repeat(bases, local, axis=0))
if resume:
    trainer.resume(resume, state)
trainer.train()
'''


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, HERE, env.get("PYTHONPATH", "")])
    return env


def runner_cmd(runner, root, overrides=None, exact=False, args=()):
    return [sys.executable, runner, str(root), json.dumps(overrides or {}),
            "exact" if exact else "plain", "--config", "tiny", "--no-progress", *args]


def run_train(runner, root, work_dir, overrides=None, args=(), timeout=900):
    cmd = runner_cmd(runner, root, overrides, args=("--work-dir", str(work_dir), *args))
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


class Killable:
    """Runs ``cmd`` as a grandchild (through bash) so that it can be SIGKILLed safely.

    Jittor's SIGCHLD handler ends the whole process when one of its *children* dies
    from a signal (meant for dead data-loader workers), so the test process must not be
    the direct parent of the process it kills.
    """

    def __init__(self, cmd, pidfile, quiet=True):
        self.pidfile = str(pidfile)
        out = subprocess.DEVNULL if quiet else None
        self.shell = subprocess.Popen(["bash", "-c", '"$@" & echo $! > "$PIDFILE"; wait $!',
                                       "killable", *cmd], env=dict(child_env(),
                                                                   PIDFILE=self.pidfile),
                                      stdout=out, stderr=out)

    def running(self):
        return self.shell.poll() is None

    def kill(self):
        """SIGKILL the command; returns the shell's exit status (137 when it was killed)."""
        deadline = time.time() + 60
        while not (osp.exists(self.pidfile) and open(self.pidfile).read().strip()):
            assert time.time() < deadline, "no pid written"
            time.sleep(0.02)
        os.kill(int(open(self.pidfile).read()), signal.SIGKILL)
        return self.shell.wait(timeout=60)

    def cleanup(self):
        if self.running():
            self.kill()


def assert_same_state(path_a, path_b, exact=True, atol=0.0):
    """Model tensors (and optimiser moments when ``exact``) of two checkpoints agree."""
    a, b = read_checkpoint(str(path_a)), read_checkpoint(str(path_b))
    assert a["iteration"] == b["iteration"]
    assert sorted(a["model"]) == sorted(b["model"])
    worst = max((float(np.abs(a["model"][k].astype(np.float64) - b["model"][k]).max()), k)
                for k in a["model"])
    if exact:
        assert worst[0] == 0.0, f"parameters differ, worst {worst}"
        for ga, gb in zip(a["optimizer"]["param_groups"], b["optimizer"]["param_groups"]):
            for key in ("m", "values"):
                for x, y in zip(ga.get(key, []), gb.get(key, [])):
                    assert np.array_equal(x, y), f"optimizer state {key} differs"
        assert a["optimizer"]["n_step"] == b["optimizer"]["n_step"]
    else:
        assert worst[0] <= atol, f"parameters differ, worst {worst}"


def logged_losses(work_dir):
    losses = []
    for path in sorted(glob.glob(osp.join(work_dir, "log_*.log"))):
        with open(path) as f:
            losses += [float(line.split(" loss=")[1].split()[0]) for line in f if " loss=" in line]
    return losses


# ---------------------------------------------------------------------------- toy set-up

class ToyNet(nn.Module):
    """conv -> BN -> drop path (random) -> layer scale (never updated) -> 1x1 classifier."""

    def __init__(self):
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = BatchNorm2d(4)
        self.drop = DropPath(0.3)
        self.scale = jt.ones((4,))
        self.head = nn.Conv2d(4, 3, 1)

    def execute(self, rgb, depth, label=None):
        x = self.bn(self.conv(rgb + depth[:, :1]))
        logits = self.head(self.drop(x) * self.scale.reshape((1, 4, 1, 1)))
        if label is None:
            return logits
        flat = logits.permute(0, 2, 3, 1).reshape((-1, 3))
        return nn.cross_entropy_loss(flat, label.reshape((-1,)), ignore_index=255)


class ToyLoader:
    """Batches that are a pure function of (seed, epoch, batch index)."""

    def __init__(self, n, batch=2, size=8, seed=0):
        self.n, self.batch, self.size, self.seed = n, batch, size, seed
        self.epoch, self.start = 0, 0
        self.seen = []

    def set_epoch(self, epoch, start_iter=0):
        self.epoch, self.start = epoch, start_iter

    def __iter__(self):
        for i in range(self.start, self.n):
            rng = np.random.default_rng([self.seed, self.epoch, i])
            self.seen.append((self.epoch, i))
            shape = (self.batch, 3, self.size, self.size)
            yield {"rgb": jt.array(rng.standard_normal(shape).astype(np.float32)),
                   "depth": jt.array(rng.standard_normal(shape).astype(np.float32)),
                   "label": jt.array(rng.integers(0, 3, (self.batch, self.size, self.size))
                                     .astype(np.int32))}


class BadBatchLoader(ToyLoader):
    """A ToyLoader whose batch ``bad`` = (epoch, index) holds a NaN (a loss of NaN)."""

    def __init__(self, n, bad, **kw):
        super().__init__(n, **kw)
        self.bad = bad

    def __iter__(self):
        for i, batch in enumerate(super().__iter__(), self.start):
            if (self.epoch, i) == self.bad:
                batch["rgb"] = batch["rgb"] * float("nan")
            yield batch


def toy_cfg(**kw):
    cfg = EasyDict(niters_per_epoch=3, nepochs=2, lr=0.05, lr_power=0.9, warm_up_epoch=1,
                   weight_decay=0.01, optimizer="AdamW", momentum=0.9, checkpoint_start_epoch=0,
                   backbone="toy", num_classes=3, decoder="toy", dataset_name="toy", seed=1)
    cfg.update(kw)
    return cfg


def toy_trainer(work_dir, max_iters=None, **cfg_kw):
    cfg = toy_cfg(**cfg_kw)
    jt.set_global_seed(0, different_seed_for_mpi=False)
    model = ToyNet()
    jt.sync_all()
    optimizer = build_optimizer(cfg, group_parameters(model))
    logger, _ = get_logger(str(work_dir), name="test.toy")
    opts = TrainOptions(max_iters=max_iters, val_every=0, seed=cfg.seed, progress=False)
    return Trainer(cfg, model, optimizer, WarmUpPolyLR.from_config(cfg),
                   ToyLoader(cfg.niters_per_epoch), None, str(work_dir), opts, logger, NullWriter())


# ============================================================================ param groups

# Groups the reference optimiser builds: (decay, no decay, excluded tensors, excluded scalars)
REFERENCE_GROUPS = {
    "NYUDepthv2.DFormer_Tiny": (239, 262, 152, 12448),
    "NYUDepthv2.DFormerv2_S": (273, 412, 29, 58),
}


@pytest.mark.parametrize("config", sorted(REFERENCE_GROUPS))
def test_param_groups_match_reference_counts(config):
    from models.builder import EncoderDecoder
    model = EncoderDecoder(load_config(config))
    groups = group_parameters(model)
    c = groups.counts()
    assert (c["decay"], c["no_decay"], c["excluded"], c["excluded_scalars"]) == \
        REFERENCE_GROUPS[config]
    kinds = {name.rsplit(".", 1)[-1] for name, _ in groups.excluded}
    if "DFormerv2" in config:
        assert kinds == {"weight"} and all(".Geo." in n for n, _ in groups.excluded)
    else:
        assert {"layer_scale_1", "layer_scale_2"} <= kinds
    # train_all_params: every trainable tensor is optimised, nothing left out
    everything = group_parameters(model, train_all=True).counts()
    assert everything["excluded"] == 0
    assert everything["decay"] + everything["no_decay"] == c["total"]
    optimizer = build_optimizer(EasyDict(load_config(config), train_all_params=True),
                                group_parameters(model, train_all=True))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == c["total"]


def test_excluded_tensors_are_never_updated(tmp_path):
    trainer = toy_trainer(tmp_path, max_iters=2)
    before = trainer.model.scale.numpy().copy()
    conv_before = trainer.model.conv.weight.numpy().copy()
    trainer.train()
    assert np.array_equal(trainer.model.scale.numpy(), before)
    assert not np.array_equal(trainer.model.conv.weight.numpy(), conv_before)


# ============================================================================ optimiser

def torch_adamw(p, grads, lrs, wd, betas=(0.9, 0.999), eps=1e-8):
    """PyTorch's AdamW update rule, in float64 numpy."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for step, (g, lr) in enumerate(zip(grads, lrs), 1):
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        denom = np.sqrt(v) / np.sqrt(1 - betas[1] ** step) + eps
        p = p - lr / (1 - betas[0] ** step) * m / denom
    return p


def torch_sgdm(p, grads, lrs, wd, momentum=0.9):
    """PyTorch's SGD (momentum, dampening 0, L2 weight decay), in float64 numpy."""
    buf = None
    for g, lr in zip(grads, lrs):
        d = g + wd * p
        buf = d if buf is None else momentum * buf + d
        p = p - lr * buf
    return p


def _run_optimizer(cls, kwargs, p0, grads, lrs):
    w = jt.array(p0[0].astype(np.float32))
    b = jt.array(p0[1].astype(np.float32))
    opt = cls([{"params": [w], "weight_decay": kwargs["weight_decay"]},
               {"params": [b], "weight_decay": 0.0}], **kwargs)
    coef_w, coef_b = [jt.array(g[0].astype(np.float32)) for g in grads], \
        [jt.array(g[1].astype(np.float32)) for g in grads]
    for cw, cb, lr in zip(coef_w, coef_b, lrs):
        opt.set_lr(lr)
        opt.step((w * cw).sum() + (b * cb).sum())   # gradients are exactly cw, cb
    return w.numpy(), b.numpy(), opt


@pytest.mark.parametrize("cls,reference,kwargs", [
    (AdamW, torch_adamw, dict(lr=1e-2, eps=1e-8, betas=(0.9, 0.999), weight_decay=0.05)),
    (SGDM, torch_sgdm, dict(lr=1e-2, momentum=0.9, weight_decay=0.05)),
])
def test_optimizer_matches_pytorch_rule(cls, reference, kwargs):
    rng = np.random.default_rng(0)
    p0 = [rng.standard_normal((3, 4)), rng.standard_normal(4)]
    grads = [[rng.standard_normal((3, 4)), rng.standard_normal(4)] for _ in range(5)]
    lrs = [1e-2, 0.0, 3e-3, 5e-3, 2e-3]   # includes the reference's lr-0 second step
    w, b, _ = _run_optimizer(cls, kwargs, p0, grads, lrs)
    extra = {"momentum": kwargs["momentum"]} if cls is SGDM else {}
    want_w = reference(p0[0], [g[0] for g in grads], lrs, kwargs["weight_decay"], **extra)
    want_b = reference(p0[1], [g[1] for g in grads], lrs, 0.0, **extra)   # no-decay group
    np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, want_b, rtol=1e-5, atol=1e-6)


def test_optimizer_state_roundtrip_is_exact():
    rng = np.random.default_rng(1)
    p0 = [rng.standard_normal((3, 4)), rng.standard_normal(4)]
    grads = [[rng.standard_normal((3, 4)), rng.standard_normal(4)] for _ in range(4)]
    kwargs = dict(lr=1e-2, eps=1e-8, betas=(0.9, 0.999), weight_decay=0.05)
    lrs = [1e-2, 0.0, 3e-3, 5e-3]
    full_w, full_b, _ = _run_optimizer(AdamW, kwargs, p0, grads, lrs)
    w2, b2, opt = _run_optimizer(AdamW, kwargs, p0, grads[:2], lrs[:2])
    state = opt.state_dict()
    w = jt.array(w2)
    b = jt.array(b2)
    fresh = AdamW([{"params": [w], "weight_decay": 0.05}, {"params": [b], "weight_decay": 0.0}],
                  **kwargs)
    fresh.load_state_dict(state)
    for g, lr in zip(grads[2:], lrs[2:]):
        fresh.set_lr(lr)
        fresh.step((w * jt.array(g[0].astype(np.float32))).sum()
                   + (b * jt.array(g[1].astype(np.float32))).sum())
    assert np.array_equal(w.numpy(), full_w) and np.array_equal(b.numpy(), full_b)
    other = AdamW([{"params": [jt.zeros((2, 2))]}, {"params": [b]}], **kwargs)
    with pytest.raises(ValueError, match="does not match"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="AdamW, not SGDM"):
        SGDM([{"params": [w]}, {"params": [b]}], lr=0.1).load_state_dict(state)


# ============================================================================ schedule

def reference_lrs(base, power, total, warmup):
    """The lr each step uses in the reference loop: constructor lr, then f(t) set after step t."""
    def f(t):
        return base * (t / warmup) if t < warmup else base * (1 - t / total) ** power
    used, lr = [], base
    for t in range(total):
        used.append(lr)      # optimizer.step() with the current lr
        lr = f(t)            # then lr_policy.get_lr(current_idx) is set
    return used


@pytest.mark.parametrize("niters,epochs,warm", [(100, 500, 10), (3, 4, 1), (331, 3, 1)])
def test_lr_schedule_matches_reference_loop(niters, epochs, warm):
    cfg = EasyDict(lr=6e-5, lr_power=0.9, niters_per_epoch=niters, nepochs=epochs,
                   warm_up_epoch=warm)
    sched = WarmUpPolyLR.from_config(cfg)
    want = reference_lrs(6e-5, 0.9, niters * epochs, niters * warm)
    got = [sched.lr_for_step(t) for t in range(niters * epochs)]
    assert got == want
    # the off-by-one quirks: full lr first, 0 second, a drop at the end of the warm-up
    assert got[0] == 6e-5 and got[1] == 0.0
    W, T = niters * warm, niters * epochs
    assert got[W] == pytest.approx(6e-5 * (W - 1) / W)
    assert got[W + 1] == pytest.approx(6e-5 * (1 - W / T) ** 0.9)


def test_schedule_state_check():
    sched = WarmUpPolyLR(1e-4, 0.9, 100, 10)
    sched.check_state(sched.state_dict())
    with pytest.raises(ValueError, match="total_iters 200 -> 100"):
        sched.check_state(dict(sched.state_dict(), total_iters=200))


def test_reference_validation_schedule():
    cfg = EasyDict(checkpoint_start_epoch=250)
    due = [e for e in range(1, 501) if reference_val_due(e, cfg)]
    assert due[:3] == [1, 10, 20] and len(due) == 276 and due[-1] == 500


# ============================================================================ toy loop

def test_toy_resume_mid_epoch_is_exact(tmp_path):
    """Stop after 4 of 6 iterations, resume in a new trainer: same result, no batch reused."""
    full = toy_trainer(tmp_path / "full")
    full.train()
    part = toy_trainer(tmp_path / "part", max_iters=4)
    assert part.train()["reason"] == "max_iters"
    resumed = toy_trainer(tmp_path / "part")
    resumed.resume(str(tmp_path / "part" / "latest.pkl"))
    assert resumed.iteration == 4
    summary = resumed.train()
    assert summary["reason"] == "finished" and summary["iteration"] == 6
    assert part.train_loader.seen + resumed.train_loader.seen == full.train_loader.seen
    assert_same_state(tmp_path / "full" / "latest.pkl", tmp_path / "part" / "latest.pkl")
    # drop path is random: another seed gives other parameters
    other = toy_trainer(tmp_path / "other", seed=2)
    other.train()
    with pytest.raises(AssertionError):
        assert_same_state(tmp_path / "full" / "latest.pkl", tmp_path / "other" / "latest.pkl")


def test_toy_checkpoint_contents_and_compatibility(tmp_path):
    trainer = toy_trainer(tmp_path, max_iters=3)
    trainer.train()
    state = read_checkpoint(str(tmp_path / "latest.pkl"))
    for key in ("model", "optimizer", "epoch", "iteration", "schedule", "best_miou", "config",
                "seed", "rng"):
        assert key in state
    assert (state["epoch"], state["iteration"], state["seed"]) == (1, 3, 1)
    assert state["config"]["backbone"] == "toy"
    with pytest.raises(CheckpointError, match="schedule"):
        toy_trainer(tmp_path, nepochs=5).resume(str(tmp_path / "latest.pkl"))
    with pytest.raises(CheckpointError, match="seed"):
        toy_trainer(tmp_path, seed=7).resume(str(tmp_path / "latest.pkl"))


def test_signal_stops_cleanly_and_saves(tmp_path):
    trainer = toy_trainer(tmp_path)
    original = trainer.run_iteration

    def run_and_signal(batch):
        loss = original(batch)
        if trainer.iteration == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    trainer.run_iteration = run_and_signal
    summary = trainer.train()
    assert summary["reason"] == "SIGTERM" and summary["iteration"] == 2
    assert read_checkpoint(str(tmp_path / "latest.pkl"))["iteration"] == 2
    assert signal.getsignal(signal.SIGTERM) != trainer.stop._handle


LOCK_WAITER = r"""
import ctypes, fcntl, os, struct, sys, time
from utils.engine.trainer import StopRequest
stop = StopRequest().install()
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_RDWR)
lock = ctypes.create_string_buffer(struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0), 32)
print("waiting", flush=True)
# the C call itself, as Jittor's kernel-cache lock makes it (Python's wrappers retry EINTR)
rc = libc.fcntl(fd, fcntl.F_SETLKW, lock)
print("rc", rc, "errno", ctypes.get_errno(), "stop", stop.reason, flush=True)
"""


def test_a_signal_does_not_interrupt_a_c_level_lock_wait(tmp_path):
    """Jittor waits for its kernel-cache lock with fcntl(F_SETLKW) and asserts that it
    succeeds: a stop signal arriving during that wait (a kernel compiling) must restart the
    wait, not fail it with EINTR, and still be seen by the trainer."""
    import fcntl
    path = tmp_path / "lock"
    path.write_bytes(b"\0")
    holder = open(path, "r+b")
    fcntl.lockf(holder, fcntl.LOCK_EX)
    proc = subprocess.Popen([sys.executable, "-c", LOCK_WAITER, str(path)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert proc.stdout.readline().strip() == "waiting"
        time.sleep(0.5)                       # inside fcntl(F_SETLKW) by now
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None            # still waiting: the call was restarted
        fcntl.lockf(holder, fcntl.LOCK_UN)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        holder.close()
    assert out.split() == ["rc", "0", "errno", "0", "stop", "SIGTERM"], out


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    trainer = toy_trainer(tmp_path, max_iters=3)
    trainer.train()
    latest = tmp_path / "latest.pkl"
    good = latest.read_bytes()

    def broken_save(obj, path):
        with open(path, "wb") as f:
            f.write(b"\x80\x04 half a pickle")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(jt, "save", broken_save)
    with pytest.raises(OSError, match="simulated"):
        trainer.save(str(latest))
    assert latest.read_bytes() == good
    assert read_checkpoint(str(latest))["iteration"] == 3
    assert not glob.glob(str(tmp_path / ".tmp-*"))


KILL_DURING_SAVE = '''import os, sys, time
from utils import runtime; runtime.setup()
import numpy as np
import jittor as jt
from utils.checkpoint import atomic_save
path = sys.argv[1]
atomic_save({"iteration": 1, "w": np.ones(1000)}, path)
def slow_save(obj, target):
    with open(target, "wb") as f:
        f.write(b"\\x80\\x04partial")
        f.flush()
        open(path + ".ready", "w").close()
        time.sleep(60)
jt.save = slow_save
atomic_save({"iteration": 2, "w": np.zeros(1000)}, path)
'''


def test_kill_during_save_keeps_previous_checkpoint(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(KILL_DURING_SAVE)
    path = str(tmp_path / "latest.pkl")
    proc = Killable([sys.executable, str(script), path], tmp_path / "pid", quiet=False)
    try:
        deadline = time.time() + 300
        while not osp.exists(path + ".ready"):
            assert proc.running(), "saver exited early"
            assert time.time() < deadline, "saver never started its second save"
            time.sleep(0.05)
        assert proc.kill() == 128 + signal.SIGKILL
    finally:
        proc.cleanup()
    state = read_checkpoint(path)
    assert state["iteration"] == 1 and np.all(state["w"] == 1)
    assert glob.glob(str(tmp_path / ".tmp-*.pkl"))  # the unfinished save is left behind...
    trainer = toy_trainer(tmp_path, max_iters=1)
    trainer.train()
    assert not glob.glob(str(tmp_path / ".tmp-*.pkl"))  # ...and removed by the next run


def test_nonfinite_loss_stops_before_the_step_and_saves(tmp_path):
    """NaN loss at iteration 4 (epoch 2, batch 1): latest.pkl holds the 4 good iterations,
    exactly those of a clean run stopped there; the message names the iteration."""
    trainer = toy_trainer(tmp_path / "nan")
    trainer.train_loader = BadBatchLoader(3, bad=(2, 1))
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at iteration 4 \(epoch 2, batch 1\)"
                       r".*saved .*latest\.pkl at iteration 4.*resume from iteration 4"):
        trainer.train()
    state = read_checkpoint(str(tmp_path / "nan" / "latest.pkl"))
    assert state["iteration"] == 4
    clean = toy_trainer(tmp_path / "clean", max_iters=4)
    clean.train()
    assert_same_state(tmp_path / "clean" / "latest.pkl", tmp_path / "nan" / "latest.pkl")
    # with a skip allowed the run goes on, the bad batch makes no update
    skipping = toy_trainer(tmp_path / "skip")
    skipping.train_loader = BadBatchLoader(3, bad=(2, 1))
    skipping.opts.skip_nonfinite = 1
    assert skipping.train()["iteration"] == 6 and skipping._skipped == [4]
    assert not [k for k, v in read_checkpoint(str(tmp_path / "skip" / "latest.pkl"))["model"].items()
                if not np.isfinite(v).all()]


def test_nan_weights_never_replace_a_good_checkpoint(tmp_path):
    trainer = toy_trainer(tmp_path, max_iters=2)
    trainer.train()
    latest = tmp_path / "latest.pkl"
    good = latest.read_bytes()
    trainer.model.head.bias.update(jt.array(np.full((3,), np.nan, np.float32)))
    with pytest.raises(NonFiniteLossError, match="head.bias.*not written"):
        trainer.save(str(latest))
    assert latest.read_bytes() == good


def test_exception_in_the_loop_saves_the_completed_iterations(tmp_path):
    trainer = toy_trainer(tmp_path)
    original = trainer.run_iteration

    def fail_at_5(batch):
        if trainer.iteration == 5:
            raise RuntimeError("simulated failure")
        return original(batch)

    trainer.run_iteration = fail_at_5
    with pytest.raises(RuntimeError, match="simulated"):
        trainer.train()
    assert read_checkpoint(str(tmp_path / "latest.pkl"))["iteration"] == 5


def test_resume_command_replaces_work_dir_and_resume():
    from utils.train import resume_command
    cmd = resume_command(["--config", "c", "--resume", "old/latest.pkl", "--work-dir=x",
                          "--max-iters", "9"], "/runs/my run")
    assert cmd == "python utils/train.py --config c --max-iters 9 --work-dir '/runs/my run' --resume"
    assert resume_command(["--resume", "--no-mst"], "w").endswith("--no-mst --work-dir w --resume")


def test_cpu_device_flushes_to_zero_without_numpy_subnormal_warnings():
    # every entry point's init_device switches to FTZ on the CPU (training and inference)
    code = ("from utils import runtime\nruntime.setup()\nimport numpy as np, jittor as jt\n"
            "assert runtime.init_device(False) == 'cpu'\n"
            "assert runtime.FTZ_STATUS == 'on' and 'flush-to-zero: on' in runtime.describe()\n"
            "tiny = jt.array(np.full((4,), 1e-20, np.float32))\n"
            "assert float((tiny * tiny).sum().item()) == 0.0\n"
            "str(np.finfo(np.float32)), str(np.finfo(np.float64))\n")
    proc = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code],
                          env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "subnormal" not in proc.stderr, proc.stderr[-2000:]


def test_zero_depth_wrapper_feeds_zeros():
    seen = {}

    class Probe(nn.Module):
        def execute(self, rgb, depth, label=None):
            seen["depth"] = depth.numpy()
            return rgb.sum()

    ZeroDepth(Probe())(jt.ones((1, 3, 2, 2)), jt.ones((1, 3, 2, 2)))
    assert np.all(seen["depth"] == 0)


def test_seed_iteration_is_a_function_of_seed_and_iteration():
    seed_iteration(5, 10)
    a = jt.rand((4,)).numpy()
    seed_iteration(5, 11)
    b = jt.rand((4,)).numpy()
    seed_iteration(5, 10)
    assert np.array_equal(a, jt.rand((4,)).numpy()) and not np.array_equal(a, b)


def test_cli_errors():
    from utils.train import build_parser, check_world
    args = build_parser().parse_args(["--config", "x", "--resume"])
    assert args.resume == "latest"
    with pytest.raises(ConfigError, match="mpirun -np 2"):
        check_world(build_parser().parse_args(["--config", "x", "--gpus", "2"]))


# ============================================================================ end to end

@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """Tiny SynthRGBD data, the runner script and one uninterrupted reference run."""
    from utils.dataloader.synthetic import ensure_synthetic_dataset
    base = tmp_path_factory.mktemp("train_e2e")
    root = base / "data"
    ensure_synthetic_dataset(tiny_cfg(root), verbose=False)
    runner = base / "runner.py"
    runner.write_text(RUNNER)
    ref = base / "reference"
    run_train(str(runner), root, ref, args=("--no-mst", "--val-every", "1",
                                           "--max-val-iters", "1"))
    return EasyDict(base=base, root=root, runner=str(runner), ref=ref)


def test_training_reduces_loss_and_writes_outputs(e2e):
    losses = logged_losses(e2e.ref)
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    for name in ("latest.pkl", "best.pkl", "config.json", "val_history.jsonl"):
        assert (e2e.ref / name).is_file(), name
    latest = read_checkpoint(str(e2e.ref / "latest.pkl"))
    assert (latest["epoch"], latest["iteration"]) == (2, 6)
    assert latest["best_miou"] is not None and latest["config"]["backbone"] == "DFormer-Tiny"
    events = glob.glob(str(e2e.ref / "tb" / "events.out.tfevents.*"))
    assert events
    blob = b"".join(open(p, "rb").read() for p in events)
    for tag in (b"train/loss", b"train/lr", b"val/mIoU"):
        assert tag in blob, tag
    with open(e2e.ref / "val_history.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]


def test_stop_mid_epoch_and_resume_equals_uninterrupted(e2e):
    work = e2e.base / "stopped"
    run_train(e2e.runner, e2e.root, work, args=("--val-every", "0", "--max-iters", "4"))
    assert read_checkpoint(str(work / "latest.pkl"))["iteration"] == 4
    run_train(e2e.runner, e2e.root, work, args=("--val-every", "0", "--resume"))
    assert_same_state(e2e.ref / "latest.pkl", work / "latest.pkl")


def test_a_busy_machine_gives_the_same_run(e2e):
    """Same seed, same run, also while every core is busy elsewhere: no result depends on
    thread timing (static OpenMP partitions, per-task outputs, reductions in a fixed order)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 2)]
    try:
        work = e2e.base / "busy"
        run_train(e2e.runner, e2e.root, work, args=("--val-every", "0"))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=60)
    assert_same_state(e2e.ref / "latest.pkl", work / "latest.pkl")


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(e2e):
    work = e2e.base / "killed"
    cmd = runner_cmd(e2e.runner, e2e.root, args=("--work-dir", str(work), "--val-every", "0",
                                                 "--ckpt-every", "2"))
    proc = Killable(cmd, e2e.base / "killed.pid")
    try:
        deadline = time.time() + 600
        while True:
            assert proc.running(), "the run ended before it could be killed"
            assert time.time() < deadline
            if (work / "latest.pkl").exists() and \
                    read_checkpoint(str(work / "latest.pkl"))["iteration"] >= 2:
                break
            time.sleep(0.05)
        assert proc.kill() == 128 + signal.SIGKILL
    finally:
        proc.cleanup()
    assert read_checkpoint(str(work / "latest.pkl"))["iteration"] < 6
    run_train(e2e.runner, e2e.root, work, args=("--val-every", "0", "--resume"))
    assert_same_state(e2e.ref / "latest.pkl", work / "latest.pkl")


def _latest_first_use(cfg, epoch, batch_size):
    """(name, batch index) of the training file whose first use in ``epoch`` is latest."""
    from utils.dataloader import build_train_loader
    ds = build_train_loader(cfg, num_workers=0)
    first = {}
    for k, index in enumerate(ds.epoch_indices(epoch)):
        e, position = divmod(int(index), ds.num_samples)
        first.setdefault(ds.names[ds.file_index(e, position)], k // batch_size)
    return max(first.items(), key=lambda item: item[1])


def test_data_error_mid_epoch_then_resume_equals_uninterrupted(e2e):
    """A corrupt label stops the run at iteration k with one error line (file, iteration,
    resume command) and latest.pkl at k; fixed and resumed, it ends bit-identical."""
    root = e2e.base / "data_broken"
    shutil.copytree(e2e.root, root)
    name, k = _latest_first_use(tiny_cfg(root), 1, 2)
    assert k > 0
    label = root / "SynthRGBD" / "Label" / f"{name}.png"
    good = label.read_bytes()
    label.write_bytes(b"not a png")
    work = e2e.base / "data_error"
    cmd = runner_cmd(e2e.runner, root, {"num_workers": 2},
                     args=("--work-dir", str(work), "--val-every", "0"))
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"Label/{name}.png" in errors[0] and f"iteration {k} " in errors[0], errors[0]
    assert f"--work-dir {work} --resume" in errors[0]
    assert read_checkpoint(str(work / "latest.pkl"))["iteration"] == k
    label.write_bytes(good)
    run_train(e2e.runner, root, work, args=("--val-every", "0", "--resume"))
    assert_same_state(e2e.ref / "latest.pkl", work / "latest.pkl")
