"""The training loop: iterations, periodic validation, checkpoints and exact resume.

Counting
--------
Epochs are numbered 1..nepochs, each with ``niters_per_epoch`` iterations; the global
iteration ``t = (epoch - 1) * niters_per_epoch + idx`` runs from 0. ``iteration`` in the
trainer and in checkpoints is the number of *completed* iterations, so a checkpoint
with ``iteration = k`` resumes at ``t = k`` (epoch ``k // n + 1``, batch ``k % n``).

Reproducibility
---------------
Before each iteration ``t`` Jittor's RNG (drop path, Dropout2d, the decoder's random NMF
bases) and Python/NumPy's are seeded from ``(seed, t)`` (per rank under MPI); the data
order and augmentation of epoch ``e`` are functions of ``(seed, e)`` (utils.dataloader),
and the lr is a function of ``t``. A run stopped at any iteration and resumed from its
checkpoint therefore performs the same computation as an uninterrupted run; batches of
the interrupted epoch that were already used are skipped. Two Jittor details matter and
are handled by utils/train.py and :meth:`Trainer.resume`: random initial weights are drawn
when first *computed* (so the model is materialised right after it is built, under the
init seed), and restored tensors are materialised before the first resumed step; on CPU
the flush-to-zero mode is fixed at start-up (:func:`utils.runtime.init_device`). With these, a
resumed CPU run ends bit-identical to the uninterrupted one (tests/test_train.py).

Logging: the lr shown (tqdm, log, TensorBoard ``train/lr``) is the lr the step *used*
(the reference prints the one it set for the next step).

Checkpoints (``utils.checkpoint.atomic_save``: temporary file + rename)
-----------------------------------------------------------------------
``latest.pkl`` after every epoch, every ``ckpt_every`` iterations, when the run stops
(end, ``--max-iters``, SIGINT/SIGTERM) and ``best.pkl`` whenever validation mIoU
improves. Content: ``model`` (segmentor state dict, numpy), ``optimizer``, ``epoch``,
``iteration``, ``schedule``, ``best_miou``/``best_epoch``, ``config``, ``seed`` and
``rng`` (how the seeds are derived), ``world_size``. A failure during an iteration or a
save never replaces the previous files.

Failures
--------
An exception inside the loop (bad data, a stuck read, a non-finite loss, anything) first
writes ``latest.pkl`` at the last *completed* iteration, then propagates with the command
that resumes the run (:attr:`Trainer.resume_command`) in its message: nothing since the
last checkpoint is lost. The loss is read *before* the optimiser step, so a non-finite
loss stops the run (:class:`NonFiniteLossError`, naming the iteration) before it reaches
the weights; ``TrainOptions.skip_nonfinite = N`` skips up to N such batches instead
(no update, logged). :meth:`Trainer.save` refuses to write non-finite weights, so a good
checkpoint is never replaced by a broken one.

Under MPI (utils.engine.distributed) the ranks agree before every step, in one small
all-reduce, whether a rank failed to load its batch or received a stop signal: then every
rank stops at the same iteration instead of waiting for ever in the next collective;
rank 0 saves ``latest.pkl`` once and alone prints the error (naming the failing rank and
its message) with the resume command. A NaN/inf loss is seen by every rank (the loss is
all-reduced). Such failures carry ``raised_on_all_ranks``: utils/train.py then lets the
other ranks exit with status 0, so that ``mpirun`` does not end rank 0 before it is done.
"""
import copy
import datetime
import json
import logging
import math
import os
import signal
import threading
import time

import numpy as np
from tqdm import tqdm

import jittor as jt
from jittor import nn

from utils.checkpoint import CheckpointError, atomic_save, read_checkpoint
from utils.engine.distributed import agree, is_main_process, mark_agreed, world_size
from utils.errors import UserError

CHECKPOINT_FORMAT = "dformer-jittor-train/1"
RNG_SCHEME = ("jt.set_global_seed(SeedSequence([seed, t])) before iteration t (+2591*rank "
              "under MPI); data order/augmentation from (seed, epoch)")


# ----------------------------------------------------------------------------- helpers

class NonFiniteLossError(UserError, FloatingPointError):
    """The loss (or the weights about to be saved) became NaN/inf; the message says where."""


def non_finite_keys(arrays):
    """Keys of the float arrays in ``arrays`` (a dict) holding a NaN or an infinity."""
    return [k for k, v in arrays.items() if np.issubdtype(np.asarray(v).dtype, np.floating)
            and not np.isfinite(v).all()]


def derived_seed(*key):
    """A 31-bit seed that is a pure function of ``key`` (ints)."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0] % (2 ** 31 - 1))


def seed_iteration(seed, t):
    """Seed Jittor, NumPy and Python RNGs for global iteration ``t`` (per rank under MPI)."""
    jt.set_global_seed(derived_seed(seed, t), different_seed_for_mpi=True)


def reference_val_due(epoch, cfg):
    """The reference's validation schedule: epoch 1, every 10th, all after ``checkpoint_start_epoch``."""
    return epoch > int(cfg.checkpoint_start_epoch) or epoch == 1 or epoch % 10 == 0


def plain(obj):
    """EasyDict/tuple/numpy scalars -> plain Python containers (for checkpoints and JSON)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def restore_model_state(model, state, source="checkpoint"):
    """Copy a saved state dict into ``model`` exactly: same keys, shapes and dtypes.

    Stricter than a weight load (no key mapping, no tolerated extras): a resumed run
    must continue from precisely the saved tensors, buffers included.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(np.shape(state[k])) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{source} does not fit the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, shape mismatch {wrong[:5]}")
    for key, var in own.items():
        value = np.asarray(state[key]).astype(str(var.dtype), copy=False)
        was_stopped = var.is_stop_grad()
        var.update(jt.array(value, dtype=str(var.dtype)))
        if was_stopped:
            var.stop_grad()


class ZeroDepth(nn.Module):
    """Calls ``model`` with the depth input replaced by zeros (RGB-only ablation)."""

    def __init__(self, model):
        self.model = model

    def execute(self, rgb, depth, label=None):
        return self.model(rgb, jt.zeros_like(depth), label)


class StopRequest:
    """SIGINT/SIGTERM/SIGUSR1 set a flag; the loop stops cleanly after the current iteration.

    SIGUSR1 is the one that reaches the ranks of an MPI job at once: ``mpirun`` forwards it
    to every rank, while it answers SIGINT/SIGTERM itself (SIGCONT to the ranks, SIGTERM only
    ``odls_base_sigkill_timeout`` seconds later, then SIGKILL). train.sh turns Ctrl-C into it.
    A second SIGINT raises KeyboardInterrupt at once (nothing is saved then).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.reason = None
        self._previous = {}

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
            # restart interrupted system calls: Jittor asserts on an interrupted wait for its
            # kernel-cache lock (fcntl F_SETLKW), so a signal arriving while a kernel compiles
            # failed the step instead of stopping after it; the handler still runs
            signal.siginterrupt(sig, False)
        return self

    def uninstall(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name


class EMATimer:
    """Exponential moving average of durations (the reference's beta 0.6)."""

    def __init__(self, beta=0.6):
        self.beta, self.mean = beta, None

    def add(self, seconds):
        if self.mean is None:
            self.mean = seconds
        else:
            self.mean = self.beta * self.mean + (1 - self.beta) * seconds


class TrainOptions:
    """Run options that are not part of the experiment config."""

    def __init__(self, max_iters=None, max_val_iters=None, val_every=None, mst=True,
                 sliding=False, amp=False, val_amp=False, seed=12345, ckpt_every=0,
                 progress=True, val_on_stop=True, skip_nonfinite=0, val_interval=None):
        self.max_iters = max_iters
        self.max_val_iters = max_val_iters
        self.val_every = val_every      # None: reference schedule; 0: never
        self.mst = mst
        self.sliding = sliding
        self.amp = amp                  # only honoured on CUDA (caller decides)
        self.val_amp = val_amp
        self.seed = int(seed)
        self.ckpt_every = int(ckpt_every or 0)
        self.progress = progress
        self.val_on_stop = val_on_stop
        self.skip_nonfinite = int(skip_nonfinite or 0)  # batches with a NaN/inf loss to skip
        # k > 0: validate every k iterations and at the end instead of at epoch ends
        self.val_interval = int(val_interval or 0)


# ----------------------------------------------------------------------------- trainer

class Trainer:
    """Runs (or resumes) a training run; see the module docstring.

    Args:
        cfg: experiment config (niters_per_epoch, nepochs, ...).
        model: the segmentor (``model(rgb, depth, label) -> loss``); its state dict is
            what checkpoints store.
        optimizer: utils.engine.optim AdamW/SGDM over the parameter groups.
        schedule: utils.engine.optim.WarmUpPolyLR.
        train_loader: utils.dataloader RGBXDataset with ``set_epoch(epoch, start_iter)``.
        val_loader: validation dataset or None.
        work_dir: where logs and checkpoints go (rank 0 writes).
        opts: TrainOptions.
        logger, tb: from utils.engine.logger.
        forward_model: what is called for the loss / evaluation (default ``model``;
            e.g. a ZeroDepth wrapper).
    """

    def __init__(self, cfg, model, optimizer, schedule, train_loader, val_loader, work_dir,
                 opts, logger, tb, forward_model=None):
        self.cfg = cfg
        self.model = model
        self.forward_model = forward_model or model
        self.optimizer = optimizer
        self.schedule = schedule
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.work_dir = work_dir
        self.opts = opts
        self.logger = logger
        self.tb = tb
        self.niters = int(cfg.niters_per_epoch)
        self.nepochs = int(cfg.nepochs)
        self.iteration = 0
        self.best_miou = None
        self.best_epoch = None
        self.last_metrics = None
        self.stop = StopRequest()
        self.train_timer, self.eval_timer = EMATimer(), EMATimer()
        self.iter_seconds = []
        self._saved_iteration = None
        self._skipped = []              # iterations skipped for a non-finite loss
        self._updating = False          # inside the optimiser step: the weights are in flux
        self._buffers = None            # forward-updated tensors before this iteration
        self.resume_command = None      # shown when a run fails (utils/train.py sets it)
        self._validated_iteration = None

    # -- paths

    @property
    def latest_path(self):
        return os.path.join(self.work_dir, "latest.pkl")

    @property
    def best_path(self):
        return os.path.join(self.work_dir, "best.pkl")

    # -- checkpoints

    def checkpoint_state(self):
        """Everything needed to resume, as plain Python / numpy objects."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": {k: v.numpy() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.completed_epoch(),
            "iteration": int(self.iteration),
            "niters_per_epoch": self.niters,
            "schedule": self.schedule.state_dict(),
            "best_miou": self.best_miou,
            "best_epoch": self.best_epoch,
            "metrics": plain(self.last_metrics) if self.last_metrics else None,
            "config": plain(dict(self.cfg)),
            "seed": self.opts.seed,
            "rng": {"scheme": RNG_SCHEME, "seed": self.opts.seed, "data_seed": self.opts.seed},
            "world_size": world_size(),
            "dtype": getattr(self.model, "float_dtype", "float32"),
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def completed_epoch(self):
        """The last fully finished epoch (0 before the first one ends)."""
        return self.iteration // self.niters

    def save(self, path, state=None):
        """Atomically write a checkpoint (rank 0 only); returns the state written."""
        if not is_main_process():
            return None
        state = state or self.checkpoint_state()
        bad = non_finite_keys(state["model"])
        if bad:
            raise NonFiniteLossError(f"model weights hold NaN/inf ({bad[0]} and {len(bad) - 1} "
                                     f"more) at iteration {state['iteration']}: not written "
                                     f"over {path}")
        start = time.time()
        atomic_save(state, path)
        if path == self.latest_path:
            self._saved_iteration = state["iteration"]
        self.logger.info(f"Saved {os.path.basename(path)} (iteration {state['iteration']}, "
                         f"epoch {state['epoch']}) in {time.time() - start:.1f}s: {path}")
        return state

    def resume(self, path, state=None):
        """Restore model, optimizer, counters and best mIoU from a checkpoint of this trainer.

        ``state``: the checkpoint already read from ``path`` (read here when None).
        """
        state = read_checkpoint(path) if state is None else state
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a training checkpoint of this project (no "
                                  f"'format': '{CHECKPOINT_FORMAT}'); to start from trained "
                                  "weights use them as pretrained/eval weights instead.")
        self._check_compatible(state, path)
        restore_model_state(self.model, state["model"], path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        jt.sync_all()  # materialise the restored tensors, as after an uninterrupted step
        self.iteration = int(state["iteration"])
        self._saved_iteration = self.iteration if os.path.abspath(path) == \
            os.path.abspath(self.latest_path) else None
        self.best_miou, self.best_epoch = state.get("best_miou"), state.get("best_epoch")
        self.last_metrics = state.get("metrics")
        epoch, idx = divmod(self.iteration, self.niters)
        self.logger.info(f"Resumed from {path}: {self.iteration} iterations done, continuing at "
                         f"epoch {epoch + 1} batch {idx}; best mIoU {self.best_miou}")
        return state

    def _check_compatible(self, state, path):
        try:
            self.schedule.check_state(state.get("schedule", {}))
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        if int(state.get("niters_per_epoch", self.niters)) != self.niters:
            raise CheckpointError(f"{path}: {state['niters_per_epoch']} iterations per epoch, "
                                  f"this run {self.niters} (batch size or dataset changed)")
        saved = state.get("config", {})
        for key in ("backbone", "num_classes", "decoder", "dataset_name"):
            if key in saved and saved[key] != self.cfg.get(key):
                raise CheckpointError(f"{path}: checkpoint {key} {saved[key]!r}, config "
                                      f"{self.cfg.get(key)!r}")
        if int(state.get("seed", self.opts.seed)) != self.opts.seed:
            raise CheckpointError(f"{path}: trained with seed {state['seed']}, this run uses "
                                  f"{self.opts.seed} (drop --seed to keep the checkpoint's)")
        dtype = getattr(self.model, "float_dtype", "float32")
        if state.get("dtype", "float32") != dtype:
            self.logger.warning(f"checkpoint written by a {state.get('dtype', 'float32')} run, "
                                f"resuming in {dtype}: results will not be bit-identical")
        if int(state.get("world_size", 1)) != world_size():
            self.logger.warning(f"checkpoint written with {state.get('world_size')} process(es), "
                                f"resuming with {world_size()}: results will not be bit-identical")

    def _remove_stale_temp_files(self):
        """Temporary files of saves that a killed run left behind (never valid checkpoints)."""
        if not (is_main_process() and self.work_dir and os.path.isdir(self.work_dir)):
            return
        for name in os.listdir(self.work_dir):
            if name.startswith(".tmp-") and name.endswith(".pkl"):
                os.remove(os.path.join(self.work_dir, name))
                self.logger.info(f"Removed {name}: an unfinished save of an interrupted run")

    # -- the loop

    @property
    def total_iters(self):
        return self.nepochs * self.niters

    def stop_iteration(self):
        """Global iteration count at which this run ends."""
        end = self.total_iters
        if self.opts.max_iters is not None:
            end = min(end, int(self.opts.max_iters))
        return end

    def train(self):
        """Train until the end of the schedule, ``max_iters`` or a stop signal.

        Returns a summary dict (iteration, epoch, reason, best_miou, last metrics).
        """
        self.stop.install()
        self._remove_stale_temp_files()
        start, end = self.iteration, self.stop_iteration()
        reason = None
        bar = tqdm(total=max(end - start, 0), desc="train", unit="it", dynamic_ncols=True,
                   disable=not (self.opts.progress and is_main_process()))
        try:
            if start >= end:
                self.logger.info(f"Nothing to do: {start} iterations done, run ends at {end}.")
            while self.iteration < end and reason is None:
                epoch, first = divmod(self.iteration, self.niters)
                reason = self.train_epoch(epoch + 1, first, end, bar)
        except Exception as exc:
            reported = self._after_failure(exc)
            if reported is exc:
                raise
            raise reported from exc
        finally:
            bar.close()
            self.stop.uninstall()
        if reason is None:
            reason = "finished" if self.iteration >= self.total_iters else "max_iters"
        return self._finish(reason)

    def _after_failure(self, exc):
        """Save the completed iterations, say how to resume; returns the exception to raise.

        A UserError comes back as the same type with one line saying where the run stopped,
        what was saved and the command that resumes it; other exceptions are logged with
        that information and come back unchanged (their traceback is kept).
        """
        epoch, idx = divmod(self.iteration, self.niters)
        where = f"iteration {self.iteration} (epoch {epoch + 1}, batch {idx})"
        if self._updating:
            saved = "the failure hit the optimiser step, so nothing was saved"
        elif self._saved_iteration == self.iteration:
            saved = f"{self.latest_path} holds iteration {self.iteration}"
        else:
            try:
                self.save(self.latest_path)
                saved = f"saved {self.latest_path} at iteration {self.iteration}"
            except Exception as save_exc:  # report the original problem, not this one
                saved = f"could not save ({save_exc})"
        last = self._saved_iteration
        if not is_main_process():
            resume = ""
        elif last is None:
            resume = "; no checkpoint to resume from yet"
        else:
            resume = (f"; after fixing it resume from iteration {last} with: "
                      f"{self.resume_command or '--resume ' + self.latest_path}")
        note = f"stopped at {where}; {saved}{resume}"
        if isinstance(exc, UserError):
            self._log_to_file(f"{exc} [{note}]")
            new = copy.copy(exc)
            new.args = (f"{exc} [{note}]",)
            return new
        self.logger.error(f"Training failed: {type(exc).__name__}: {exc} [{note}]")
        return exc

    def _log_to_file(self, message):
        """An ERROR record for the log file only (the console gets the one-line error)."""
        record = self.logger.makeRecord(self.logger.name, 40, __file__, 0, message, None, None)
        for handler in self.logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)

    def _finish(self, reason):
        mid_epoch = self.iteration % self.niters != 0
        if reason == "max_iters" and mid_epoch and self.opts.val_on_stop \
                and self.val_loader is not None and self._validated_iteration != self.iteration:
            self.validate(round(self.iteration / self.niters, 3), label="final")
        if self._saved_iteration != self.iteration:
            self.save(self.latest_path)
        msg = {"finished": "Training finished", "max_iters": "Stopped at --max-iters"}.get(
            reason, f"Stopped by {reason}")
        self.logger.info(f"{msg}: {self.iteration} iterations (epoch "
                         f"{self.iteration / self.niters:.2f}/{self.nepochs}); best mIoU "
                         f"{self.best_miou} (epoch {self.best_epoch}); checkpoints in "
                         f"{self.work_dir}")
        spi = self.seconds_per_iteration()
        if spi is not None:
            self.logger.info(f"Median time per iteration this run: {spi:.3f}s "
                             f"({len(self.iter_seconds)} iterations)")
        self.tb.flush()
        return {"iteration": self.iteration, "epoch": self.completed_epoch(), "reason": reason,
                "best_miou": self.best_miou, "metrics": self.last_metrics,
                "seconds_per_iter": self.seconds_per_iteration()}

    def seconds_per_iteration(self):
        """Median wall time of the timed iterations (the first two, compiling, excluded)."""
        timed = self.iter_seconds[2:] or self.iter_seconds
        return float(np.median(timed)) if timed else None

    def train_epoch(self, epoch, first, end, bar):
        """Iterations ``first..`` of ``epoch`` (up to global iteration ``end``).

        Returns None after a complete epoch (validation and checkpoint done), otherwise
        why it stopped early: "max_iters" or the stop signal's name.
        """
        self.forward_model.train()
        self.train_loader.set_epoch(epoch, start_iter=first)
        sum_loss, count, t0 = 0.0, 0, time.time()
        bar.set_description(f"epoch {epoch}/{self.nepochs}")
        batches = iter(self.train_loader)
        for idx in range(first, self.niters):
            batch, failure = self._next_batch(batches, epoch, idx)
            stop = self._agree(failure)
            if stop:
                return stop
            loss = self.run_iteration(batch)
            if math.isfinite(loss):
                sum_loss, count = sum_loss + loss, count + 1
            self._log_iteration(epoch, idx, loss, sum_loss / max(count, 1), bar)
            if self._iteration_val_due(end):
                self.validate(round(self.iteration / self.niters, 3))
            if idx + 1 == self.niters:
                break
            if self.iteration >= end:
                return "max_iters"
            if self.opts.ckpt_every and self.iteration % self.opts.ckpt_every == 0:
                self.save(self.latest_path)
        self.train_timer.add(time.time() - t0)
        stop = self._agree()
        # On a stop request the epoch's validation is skipped (a Ctrl-C also reaches the
        # data-loader workers); its checkpoint is still written.
        self._end_epoch(epoch, sum_loss / max(count, 1), validate=stop is None)
        return stop

    def run_iteration(self, batch):
        """One optimisation step at global iteration ``self.iteration``; returns the loss.

        The loss is read before the step: a NaN/inf loss never reaches the weights.
        """
        t = self.iteration
        start = time.time()
        self._snapshot_buffers()
        seed_iteration(self.opts.seed, t)
        lr = self.schedule.lr_for_step(t)
        self.optimizer.set_lr(lr)
        rgb, depth, label = batch["rgb"], batch["depth"], batch["label"]
        if self.opts.amp:
            with jt.flag_scope(auto_mixed_precision_level=5):
                loss = self.forward_model(rgb, depth, label)
                self.optimizer.backward(loss)
        else:
            loss = self.forward_model(rgb, depth, label)
            self.optimizer.backward(loss)
        if jt.in_mpi:
            loss = loss.mpi_all_reduce("mean")
        value = float(loss.item())
        if math.isfinite(value):
            self._updating = True
            self.optimizer.step()
            jt.sync_all()
            self._updating = False
        else:
            self._undo_iteration()
            self._skip_non_finite(t, value)
        self.iteration = t + 1
        self.iter_seconds.append(time.time() - start)
        return value

    def _snapshot_buffers(self):
        """Copy the tensors the forward pass itself updates (BatchNorm running statistics,
        i.e. the stop-grad ones) so that a non-finite batch can be undone completely."""
        self._buffers = {k: (v, v.numpy()) for k, v in self.model.state_dict().items()
                         if v.is_stop_grad()}

    def _undo_iteration(self):
        """Forget a batch after its backward pass: restore the forward-updated tensors, drop
        the gradients and the optimiser's step count (Adam's bias correction uses it)."""
        for var, value in (self._buffers or {}).values():
            var.update(jt.array(value))
        self.optimizer.zero_grad()
        self.optimizer.n_step -= 1
        jt.sync_all()

    def _skip_non_finite(self, t, value):
        """Drop the gradients of a batch with a NaN/inf loss, or stop if no skip is left."""
        epoch, idx = divmod(t, self.niters)
        if len(self._skipped) >= self.opts.skip_nonfinite:
            allowed = (f"{self.opts.skip_nonfinite} already skipped" if self.opts.skip_nonfinite
                       else "--skip-nonfinite N skips up to N such batches")
            # the loss is all-reduced under MPI: every rank gets here at this iteration
            raise mark_agreed(NonFiniteLossError(
                f"loss is {value} at iteration {t} (epoch {epoch + 1}, batch {idx}): training "
                f"stopped before that step, the weights are intact; check the data (a batch "
                f"without a valid label gives NaN) or lower the lr ({allowed})"))
        self._skipped.append(t)
        self.logger.warning(f"loss is {value} at iteration {t} (epoch {epoch + 1}, batch "
                            f"{idx}): batch skipped, no update ({len(self._skipped)} of at "
                            f"most {self.opts.skip_nonfinite})")

    def _next_batch(self, batches, epoch, idx):
        """``(batch, None)``, or ``(None, exception)`` when the loader failed."""
        try:
            batch = next(batches, None)
            if batch is None:
                raise RuntimeError(f"the training loader ran out after {idx} of {self.niters} "
                                   f"batches in epoch {epoch}")
            return batch, None
        except Exception as exc:  # raised by agree() on every rank at once
            return None, exc

    def _agree(self, failure=None):
        """Before each step: all ranks learn whether one failed (then all raise, see
        utils.engine.distributed) or got a stop signal (then all stop here).

        Returns the stop reason or None. One all-reduce of N+1 floats under MPI.
        """
        reason = self.stop.reason
        epoch, idx = divmod(self.iteration, self.niters)
        stop = agree(failure, stop=reason is not None,
                     where=f"at iteration {self.iteration} (epoch {epoch + 1}, batch {idx})")
        return reason or ("a signal on another rank" if stop else None)

    def _log_iteration(self, epoch, idx, loss, mean_loss, bar):
        lr = self.optimizer.current_lr()
        bar.set_postfix(loss=f"{loss:.4f}", avg=f"{mean_loss:.4f}", lr=f"{lr:.3e}", refresh=False)
        bar.update(1)
        self.tb.add_scalar("train/loss", loss, self.iteration)
        self.tb.add_scalar("train/lr", lr, self.iteration)
        every = max(int(self.niters * 0.1), 1)
        if idx == 0 or (idx + 1) % every == 0 or idx + 1 == self.niters:
            self.logger.info(f"Epoch {epoch}/{self.nepochs} Iter {idx + 1}/{self.niters}: "
                             f"lr={lr:.4e} loss={loss:.4f} total_loss={mean_loss:.4f}")

    def _end_epoch(self, epoch, mean_loss, validate=True):
        self.tb.add_scalar("train/epoch_loss", mean_loss, epoch)
        if validate and self.val_due(epoch):
            self.validate(epoch)
        self.save(self.latest_path)
        self._log_eta(epoch)
        self.tb.flush()

    def _iteration_val_due(self, end):
        """Iteration-based validation (``val_interval``): every k iterations and at the end."""
        k = self.opts.val_interval
        return bool(k and self.val_loader is not None
                    and (self.iteration % k == 0 or self.iteration == end))

    def val_due(self, epoch):
        if self.val_loader is None or self.opts.val_interval:
            return False
        every = self.opts.val_every
        if every is None:
            return reference_val_due(epoch, self.cfg) or epoch == self.nepochs
        return every > 0 and (epoch % every == 0 or epoch == self.nepochs)

    def _log_eta(self, epoch):
        left_epochs = self.nepochs - epoch
        left_evals = sum(1 for e in range(epoch + 1, self.nepochs + 1) if self.val_due(e))
        train_s, eval_s = self.train_timer.mean or 0.0, self.eval_timer.mean or 0.0
        eta = datetime.datetime.now() + datetime.timedelta(
            seconds=train_s * left_epochs + eval_s * left_evals)
        self.logger.info(f"Avg train time: {train_s:.2f}s, avg eval time: {eval_s:.2f}s, "
                         f"left eval count: {left_evals}, ETA: {eta:%Y-%m-%d %H:%M:%S}")

    # -- validation

    def validate(self, epoch, label=None):
        """Evaluate on the validation loader; track and save the best mIoU."""
        from utils.engine.evaluator import evaluate, tta_modes
        start = time.time()
        scales, flip = tta_modes(self.cfg) if self.opts.mst else ((1.0,), False)
        kwargs = dict(scales=scales, flip=flip, sliding=self.opts.sliding,
                      max_iters=self.opts.max_val_iters, progress=self.opts.progress,
                      seed=derived_seed(self.opts.seed, 7919, int(epoch * self.niters)))
        if self.opts.val_amp:
            with jt.flag_scope(auto_mixed_precision_level=5):
                metrics = evaluate(self.forward_model, self.val_loader, self.cfg, **kwargs)
        else:
            metrics = evaluate(self.forward_model, self.val_loader, self.cfg, **kwargs)
        self.eval_timer.add(time.time() - start)
        self._validated_iteration = self.iteration
        self.last_metrics = metrics
        miou = metrics.get("miou")
        improved = miou is not None and (self.best_miou is None or miou > self.best_miou)
        if improved:
            self.best_miou, self.best_epoch = miou, epoch
        self._log_metrics(epoch, metrics, label)
        if improved:
            self.save(self.best_path)
        return metrics

    def _log_metrics(self, epoch, metrics, label):
        for key, name in (("miou", "mIoU"), ("macc", "mAcc"), ("mf1", "mF1"),
                          ("pixel_acc", "pixel_acc")):
            if metrics.get(key) is not None:
                self.tb.add_scalar(f"val/{name}", float(metrics[key]), self.iteration)
        what = f"{label} validation" if label else "validation"
        epoch_text = f"{epoch:g}" if isinstance(epoch, float) else str(epoch)
        extra = ", ".join(f"{name} {metrics[k]}" for k, name in (("macc", "mAcc"), ("mf1", "mF1"))
                          if k in metrics)
        self.logger.info(f"Epoch {epoch_text} {what} result: mIoU {metrics.get('miou')}"
                         + (f", {extra}" if extra else "")
                         + f", best mIoU {self.best_miou} (epoch {self.best_epoch})")
        if is_main_process() and self.work_dir:
            record = {"epoch": epoch, "iteration": self.iteration,
                      **{k: v for k, v in plain(metrics).items() if np.isscalar(v)}}
            with open(os.path.join(self.work_dir, "val_history.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
