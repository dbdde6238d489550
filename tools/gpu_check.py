"""One command that says whether this project works on a machine's GPU (or CPU).

    python tools/gpu_check.py --device cuda [--out output/gpu_check] [--quick]
    python tools/gpu_check.py --device cpu --quick        # what CI runs: the script itself

Checks, each in a fresh process (this one never imports Jittor):

1. environment: Jittor version, the CUDA set-up (utils/cuda_toolkit.py), GPU name, driver;
2. forward parity: tests/test_parity.py (the bundled PyTorch fixtures, same tolerances)
   with ``DFORMER_TEST_DEVICE`` set, so tests/conftest.py runs them on that device with
   tensor cores off; plus every other ``tests/test_*parity*.py`` (training parity, AMP off);
3. training: ``--iters`` iterations of the quick-start recipe (SynthRGBD, DFormer-Tiny) at
   ``--size`` through utils/train.py, with and without ``--amp`` on CUDA: loss finite and
   lower at the end than at the start, peak memory;
4. eval (utils/eval.py) and infer (utils/infer.py) of the trained checkpoint;
5. speed: inference and training-step time of each ``--models`` config through
   utils/latency.py and, when ``--torch-python`` can import torch and the official code
   (``--torch-ref``) and the harness of ../shared/perf (``--torch-harness``) exist, of the
   official PyTorch model on the same device (tools/torch_speed.py), interleaved.

Writes ``<out>/gpu_check.json`` and prints a summary; exits 1 when any check fails
(a skipped check is not a failure; its reason is recorded).
"""
import argparse
import glob
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("DFormer_Tiny", "DFormer_Small", "DFormer_Base", "DFormer_Large",
          "DFormerv2_S", "DFormerv2_B", "DFormerv2_L")
QUICK_START = "local_configs.SynthRGBD.DFormer_Tiny"

_ENV_PROBE = r"""
import json, subprocess, sys
from utils import cuda_toolkit, runtime
runtime.setup()
import jittor as jt
device = runtime.init_device(sys.argv[1] == "cuda")
res = {"jittor": jt.__version__, "python": sys.version.split()[0], "device": device,
       "has_cuda": bool(jt.has_cuda), "cuda_setup": cuda_toolkit.STATUS,
       "runtime": runtime.describe()}
if device == "cuda":
    from jittor import compile_extern
    res["cudnn_loaded"] = compile_extern.cudnn is not None
    res["cublas_loaded"] = compile_extern.cublas is not None
    res["use_tensorcore"] = int(jt.flags.use_tensorcore)
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                        "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
    res["gpu"] = q.stdout.strip()
x = jt.array([1.0, 2.0, 3.0])
res["smoke_sum"] = float((x * 2).sum().item())
print(json.dumps(res))
"""


class Run:
    """A child process with its output in files, its peak memory (RSS; GPU via nvidia-smi)."""

    def __init__(self, args, log, cwd=REPO, env=None, timeout=600, gpu=False):
        self.args, self.log, self.timeout = args, log, timeout
        env = dict(os.environ, **(env or {}))
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        self.start = time.time()
        with open(log, "w") as out:
            # its own process group: a timeout ends the compilers it started too
            self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, text=True,
                                         start_new_session=True)
        self.peak_gpu_mb = None
        self._stop = threading.Event()
        if gpu:
            self._thread = threading.Thread(target=self._poll_gpu, daemon=True)
            self._thread.start()

    def _poll_gpu(self):
        """Peak GPU memory of the child: its own line in nvidia-smi's process list, or (in a
        container, where nvidia-smi may not see its PIDs) the GPU's use above the start."""
        base, peak_total = None, 0
        while not self._stop.wait(0.5):
            try:
                apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                       "--format=csv,noheader,nounits"], capture_output=True,
                                      text=True, timeout=10).stdout
                total = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                                        "--format=csv,noheader,nounits"], capture_output=True,
                                       text=True, timeout=10).stdout.split()
            except (OSError, subprocess.SubprocessError):
                return
            own = [int(p[1]) for p in (line.split(",") for line in apps.splitlines())
                   if len(p) == 2 and p[0].strip() == str(self.proc.pid)
                   and p[1].strip().isdigit()]
            if own:
                self.peak_gpu_mb = max(self.peak_gpu_mb or 0, own[0])
            elif total and total[0].isdigit():
                base = int(total[0]) if base is None else base
                peak_total = max(peak_total, int(total[0]) - base)
                if self.peak_gpu_mb is None or self.peak_gpu_mb < peak_total:
                    self.peak_gpu_mb = peak_total

    def _kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self):
        """(return code, output text, seconds, peak RSS in MB); kills the child at the timeout
        (return code 124) or when this command is interrupted."""
        deadline = self.start + self.timeout
        rusage = None
        try:
            while rusage is None:
                pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
                if pid:
                    rusage, self.proc.returncode = usage, os.waitstatus_to_exitcode(status)
                elif time.time() > deadline:
                    self._kill()
                    _, status, rusage = os.wait4(self.proc.pid, 0)
                    self.proc.returncode = 124
                else:
                    time.sleep(0.2)
        except BaseException:
            self._kill()
            raise
        finally:
            self._stop.set()
        self._kill()   # whatever the child left running in its group
        with open(self.log, errors="replace") as f:
            text = f.read()
        if self.proc.returncode == 124:
            text += f"\n[gpu_check] killed after {self.timeout} s (--timeout); log: {self.log}\n"
        return self.proc.returncode, text, time.time() - self.start, rusage.ru_maxrss / 1024


def _py(*args):
    return [sys.executable, *args]


def _tail(text, n=1500):
    return text[-n:]


def _last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def _first_failure(text, rc):
    """One line saying why a pytest run failed: its first ``FAILED``/``ERROR`` summary line
    (test id and the assertion's first line), else the last line of its output."""
    for line in text.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line[:400]
    if rc == 124:
        return "killed at the time limit (--timeout)"
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return (lines[-1] if lines else f"exit status {rc}, no output")[:400]


def check_environment(opts):
    rc, text, secs, _ = Run(_py("-c", _ENV_PROBE, opts.device), opts.log("environment")).wait()
    res = _last_json(text) if rc == 0 else None
    if res is None:
        return {"ok": False, "error": _tail(text)}
    res["ok"] = res["device"] == opts.device and res["smoke_sum"] == 12.0
    return res


def check_parity(opts):
    """The parity tests on the device; on the CPU a second time with the fused kernels off,
    which is the formulation CUDA runs."""
    files = ["tests/test_parity.py"] + sorted(
        os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "tests", "test_*parity*.py"))
        if not p.endswith("test_parity.py"))
    runs = [("fused" if opts.device == "cpu" else "cuda", "1")]
    if opts.device == "cpu":
        runs.append(("plain (the CUDA formulation)", "0"))
    res = {"files": files, "ok": True, "runs": {}}
    for name, fused in runs:
        env = {"DFORMER_TEST_DEVICE": opts.device, "DFORMER_FUSED_KERNELS": fused,
               "NVIDIA_TF32_OVERRIDE": "0",   # no TF32 in cuBLAS/cuDNN either
               "COLUMNS": "400"}   # pytest's FAILED lines whole: the reason of _first_failure
        rc, text, secs, _ = Run(_py("-m", "pytest", "-q", "-p", "no:cacheprovider", *files,
                                    "-k", opts.parity_filter),
                                opts.log("parity_" + name.split()[0]), env=env,
                                timeout=opts.timeout).wait()
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)",
                                                    text)}
        run = {"counts": counts, "seconds": round(secs, 1),
               "ok": rc == 0 and counts.get("passed", 0) > 0}
        if not run["ok"]:
            run["error"] = _tail(text)
            run["reason"] = _first_failure(text, rc)
        res["runs"][name] = run
        res["ok"] = res["ok"] and run["ok"]
    return res


def _tensorboard_losses(run_dir):
    """train/loss per iteration from the run's TensorBoard event files."""
    from tensorboardX.proto import event_pb2
    losses = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "**", "events.out.tfevents.*"),
                                 recursive=True)):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.tag == "train/loss":
                    losses[event.step] = value.simple_value
    return [losses[k] for k in sorted(losses)]


def check_training(opts, amp):
    name = "train_amp" if amp else "train"
    run_dir = os.path.join(opts.out, name)
    h, w = opts.size
    args = _py("utils/train.py", "--config", QUICK_START, "--work-dir", run_dir,
               "--max-iters", str(opts.iters), "--max-val-iters", "1", "--no-mst",
               "--no-progress", "--val-every", "0", "--amp" if amp else "--no-amp",
               "--no-val-amp", "--cfg-options", f"image_height={h}", f"image_width={w}",
               f"eval_crop_size=[{h},{w}]", *opts.train_options)
    env = {} if opts.device == "cuda" else {"DFORMER_CUDA": "0"}
    run = Run(args, opts.log(name), env=env, timeout=opts.timeout, gpu=opts.device == "cuda")
    rc, text, secs, rss = run.wait()
    losses = _tensorboard_losses(run_dir) if rc == 0 else []
    k = max(1, len(losses) // 4)
    first, last = (sum(losses[:k]) / k, sum(losses[-k:]) / k) if losses else (None, None)
    finite = bool(losses) and all(v == v and abs(v) != float("inf") for v in losses)
    res = {"iterations": len(losses), "losses": [round(v, 4) for v in losses],
           "loss_first": first, "loss_last": last, "finite": finite,
           "falling": finite and last < first, "seconds": round(secs, 1),
           "peak_rss_mb": round(rss), "checkpoint": os.path.join(run_dir, "latest.pkl")}
    m = re.search(r"Median time per iteration this run: ([\d.]+)s", text)
    res["median_s_per_iter"] = float(m.group(1)) if m else None
    if opts.device == "cuda":
        res["peak_gpu_mb"] = run.peak_gpu_mb
    res["ok"] = (rc == 0 and res["iterations"] == opts.iters and res["falling"]
                 and os.path.isfile(res["checkpoint"]))
    if rc != 0:
        res["error"] = _tail(text)
    return res


def check_eval_infer(opts, checkpoint):
    h, w = opts.size
    options = ["--cfg-options", f"image_height={h}", f"image_width={w}",
               f"eval_crop_size=[{h},{w}]"]
    metrics = os.path.join(opts.out, "eval_metrics.json")
    rc, text, secs, _ = Run(_py("utils/eval.py", "--config", QUICK_START, "--checkpoint",
                                checkpoint, "--max-val-iters", str(opts.eval_batches),
                                "--json", metrics, "--seed", "0", "--no-progress",
                                "--device", opts.device, *options),
                            opts.log("eval"), timeout=opts.timeout).wait()
    res = {"eval_seconds": round(secs, 1)}
    if rc == 0 and os.path.isfile(metrics):
        with open(metrics) as f:
            m = json.load(f)["metrics"]
        res.update(miou=m["miou"], pixel_acc=m["pixel_acc"])
    else:
        res["eval_error"] = _tail(text)
    out_dir = os.path.join(opts.out, "infer")
    rc2, text2, secs2, _ = Run(_py("utils/infer.py", "--config", QUICK_START, "--checkpoint",
                                   checkpoint, "--split", "test", "--max-images", "2", "--out",
                                   out_dir, "--seed", "0", "--device", opts.device, *options),
                               opts.log("infer"), timeout=opts.timeout).wait()
    res["infer_seconds"] = round(secs2, 1)
    res["infer_images"] = len(glob.glob(os.path.join(out_dir, "pred", "*.png")))
    if rc2 != 0:
        res["infer_error"] = _tail(text2)
    res["ok"] = ("miou" in res and 0.0 <= res["miou"] <= 100.0 and res["infer_images"] == 2)
    return res


def _torch_status(opts):
    """None when the official PyTorch model can be timed, else why not."""
    probe = subprocess.run([opts.torch_python, "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True, timeout=120) \
        if os.path.isfile(opts.torch_python) or opts.torch_python == sys.executable else None
    if probe is None or probe.returncode != 0:
        return f"torch is not importable by {opts.torch_python}"
    if not os.path.isfile(os.path.join(opts.torch_harness, "ref_harness.py")):
        return f"no ref_harness.py in {opts.torch_harness} (../shared/perf)"
    if not os.path.isdir(os.path.join(opts.torch_ref, "models")):
        return f"the official code is not at {opts.torch_ref} (--torch-ref)"
    return None


def check_speed(opts):
    why_not = _torch_status(opts)
    rows = []
    for model in opts.models:
        for mode in ("infer", "train"):
            shape, batch = (opts.infer_size, 1) if mode == "infer" else (opts.train_size, 2)
            args = _py("utils/latency.py", "--config", f"local_configs.NYUDepthv2.{model}",
                       "--shape", *map(str, shape), "--batch", str(batch), "--warmup",
                       str(opts.warmup), "--iters", str(opts.timed), "--device", opts.device,
                       "--json", *(["--train"] if mode == "train" else []))
            rc, text, _, _ = Run(args, opts.log(f"jittor_{model}_{mode}"),
                                 timeout=opts.timeout).wait()
            ours = _last_json(text) if rc == 0 else None
            row = {"model": model, "mode": mode, "shape": list(shape), "batch": batch,
                   "ok": ours is not None}
            if ours is None:
                row["error"] = _tail(text)
            elif mode == "infer":
                row["jittor_ms"] = ours["median_ms"]
            else:
                row["jittor_ms"] = ours["median_s_per_iter"] * 1e3
            if why_not is None:
                rc, text, _, _ = Run([opts.torch_python, os.path.join(REPO, "tools",
                                                                      "torch_speed.py"),
                                      "--harness", opts.torch_harness, "--ref", opts.torch_ref,
                                      "--model", model, "--mode", mode, "--device", opts.device,
                                      "--shape", *map(str, shape), "--batch", str(batch),
                                      "--warmup", str(opts.warmup), "--iters", str(opts.timed)],
                                     opts.log(f"torch_{model}_{mode}"), cwd=opts.out,
                                     timeout=opts.timeout).wait()
                theirs = _last_json(text) if rc == 0 else None
                if theirs is None:
                    row.update(ok=False, torch_error=_tail(text))
                else:
                    row["torch_ms"] = theirs["median_ms"]
                    if row.get("jittor_ms"):
                        row["jittor_over_torch"] = row["jittor_ms"] / theirs["median_ms"]
            rows.append(row)
    return {"ok": all(r["ok"] for r in rows), "rows": rows,
            "torch": "compared" if why_not is None else f"skipped: {why_not}"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), required=True)
    p.add_argument("--out", default=os.path.join(REPO, "output", "gpu_check"))
    p.add_argument("--quick", action="store_true",
                   help="small sizes and counts (what CI runs with --device cpu)")
    p.add_argument("--checks", nargs="+", default=["environment", "parity", "train", "eval",
                                                   "speed"],
                   choices=["environment", "parity", "train", "eval", "speed"])
    p.add_argument("--iters", type=int, help="training iterations (default 20; quick 3)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="training size (default 480 640; quick 64 64)")
    p.add_argument("--models", nargs="+", choices=MODELS,
                   help="speed: configs (default all 7; quick DFormer_Tiny)")
    p.add_argument("--torch-python", default=sys.executable,
                   help="interpreter that imports torch (speed comparison)")
    p.add_argument("--torch-harness", default=os.path.join(os.path.dirname(REPO), "shared",
                                                           "perf"))
    p.add_argument("--torch-ref", default=os.environ.get("DFORMER_TORCH_REF",
                                                         os.path.join(REPO, ".ref")))
    p.add_argument("--timeout", type=int, default=600, help="seconds per child process")
    p.add_argument("--train-option", dest="train_options", action="append", default=[],
                   help="extra utils/train.py argument (repeatable; a failing one makes the "
                        "training check fail, which is how CI tests the exit code)")
    opts = p.parse_args(argv)
    quick = opts.quick
    opts.iters = opts.iters or (3 if quick else 20)
    opts.size = tuple(opts.size or ((64, 64) if quick else (480, 640)))
    opts.models = opts.models or (["DFormer_Tiny"] if quick else list(MODELS))
    opts.infer_size = (64, 64) if quick else (480, 640)
    opts.train_size = (64, 64) if quick else (480, 640)
    opts.warmup, opts.timed = (0, 1) if quick else (3, 10)
    opts.eval_batches = 2 if quick else 10
    if quick:   # test_e2e's batch: its compiled kernels are reused in CI
        opts.train_options = ["--batch-size-override", "2"] + opts.train_options
    opts.parity_filter = "bundled" if quick else "bundled or train"
    if opts.device == "cuda":
        # nvcc takes seconds per kernel and a model's first steps need hundreds: compile them
        # with Jittor's pool of compilers (utils/runtime.py keeps one g++ at a time on the CPU,
        # where forks from threaded processes were seen to hang; every child here has a
        # timeout, so a hang fails its check instead of the command).
        os.environ.setdefault("DFORMER_PARALLEL_COMPILE", "1")
    opts.out = os.path.abspath(opts.out)
    os.makedirs(opts.out, exist_ok=True)
    opts.log = lambda name: os.path.join(opts.out, f"{name}.log")
    return opts


def run_checks(opts):
    report = {"device": opts.device, "quick": opts.quick,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "checks": {}}
    t0 = time.time()
    checks = report["checks"]
    if "environment" in opts.checks:
        checks["environment"] = check_environment(opts)
    if "parity" in opts.checks:
        checks["parity"] = check_parity(opts)
    if "train" in opts.checks:
        checks["train"] = check_training(opts, amp=False)
        if opts.device == "cuda":
            checks["train_amp"] = check_training(opts, amp=True)
        else:
            report["skipped"] = {"train_amp": "--amp is CUDA-only"}
    if "eval" in opts.checks:
        ckpt = checks.get("train", {}).get("checkpoint")
        checks["eval_infer"] = check_eval_infer(opts, ckpt) if ckpt and os.path.isfile(ckpt) \
            else {"ok": False, "error": "no trained checkpoint (run the train check)"}
    if "speed" in opts.checks:
        checks["speed"] = check_speed(opts)
    report["seconds"] = round(time.time() - t0, 1)
    report["ok"] = all(c.get("ok") for c in checks.values())
    return report


def summary(report):
    lines = [f"gpu_check on {report['device']}: {'PASS' if report['ok'] else 'FAIL'} "
             f"({report['seconds']} s)"]
    c = report["checks"]
    if "environment" in c:
        e = c["environment"]
        lines.append(f"  environment  {'ok' if e['ok'] else 'FAIL'}: jittor {e.get('jittor')}, "
                     f"device {e.get('device')}, CUDA: {e.get('cuda_setup')}"
                     + (f", GPU {e['gpu']}" if e.get("gpu") else ""))
    if "parity" in c:
        runs = "; ".join(f"{name}: {r['counts']}" for name, r in c["parity"]["runs"].items())
        lines.append(f"  parity       {'ok' if c['parity']['ok'] else 'FAIL'}: {runs} "
                     f"({', '.join(c['parity']['files'])})")
        lines += [f"    {name} failed: {r['reason']}" for name, r in c["parity"]["runs"].items()
                  if "reason" in r]
    for name in ("train", "train_amp"):
        if name in c:
            t = c[name]
            mem = f", peak GPU {t['peak_gpu_mb']} MiB" if t.get("peak_gpu_mb") else ""
            lines.append(f"  {name:<12} {'ok' if t['ok'] else 'FAIL'}: {t['iterations']} iters, "
                         f"loss {t['loss_first']} -> {t['loss_last']}, "
                         f"{t['median_s_per_iter']} s/iter, peak RSS {t['peak_rss_mb']} MiB{mem}")
    if "eval_infer" in c:
        e = c["eval_infer"]
        lines.append(f"  eval/infer   {'ok' if e['ok'] else 'FAIL'}: mIoU {e.get('miou')}, "
                     f"{e.get('infer_images')} images written")
    if "speed" in c:
        s = c["speed"]
        lines.append(f"  speed        {'ok' if s['ok'] else 'FAIL'} (torch: {s['torch']})")
        for r in s["rows"]:
            torch_ms = f"{r['torch_ms']:.1f}" if r.get("torch_ms") else "-"
            ours = f"{r['jittor_ms']:.1f}" if r.get("jittor_ms") else "FAIL"
            lines.append(f"    {r['model']:<14} {r['mode']:<5} {r['shape'][0]}x{r['shape'][1]} "
                         f"b{r['batch']}: jittor {ours} ms, torch {torch_ms} ms")
    return "\n".join(lines)


def main(argv=None):
    opts = parse_args(argv)
    report = run_checks(opts)
    path = os.path.join(opts.out, "gpu_check.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(summary(report))
    print(f"details: {path} (logs beside it)")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
