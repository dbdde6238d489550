"""Signals during oneDNN matrix products (utils/signal_safety.py).

oneDNN's JIT GEMM kernels run with the stack pointer in the heap; a signal frame
written there corrupts it. Without the shield the storm below aborts the child
("corrupted size vs. prev_size") in 3 runs of 3 within its 8 seconds (checked by hand
on the AMD EPYC AVX-512 machine, 2026-12-08, by skipping ``signal_safety.shield``);
an MPI rank died that way in 1 of 30 (quiet machine) to 7 of 36 (busy) runs of the
Ctrl-C test of ``tests/test_mpi.py``.
"""
import json
import os
import signal
import subprocess
import sys
import time

from test_train import child_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from utils import runtime
runtime.setup()
import numpy as np
import jittor as jt
runtime.init_device(False)
from utils import signal_safety
mode = sys.argv[2]
if mode == "masks":
    a = jt.array(np.ones((256, 256), np.float32))
    jt.matmul(a, a).sum().item()            # oneDNN's OpenMP workers at work
    masks = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/status") as f:
            line = next(l for l in f if l.startswith("SigBlk:"))
        masks[int(tid)] = int(line.split()[1], 16)
    report = {"main": os.getpid(), "masks": masks, "status": signal_safety.STATUS,
              "alt_stack": signal_safety.alt_stack_size()}
    print("MASKS " + json.dumps(report), flush=True)
    sys.exit(0)
handled = [0]
def count(signum, frame):
    handled[0] += 1
signal.signal(signal.SIGUSR1, count)
rng = np.random.RandomState(0)
mats = [jt.array(rng.randn(n, n).astype("float32")) for n in (64, 96, 128, 192, 256)]
for a in mats:
    jt.matmul(a, a).sum().item()               # compiled before the storm
print("READY", flush=True)
end = time.time() + float(sys.argv[3])
steps = 0
while time.time() < end:
    for a in mats:
        jt.matmul(a, a).sum().item()
    steps += 1
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
print("HANDLED", handled[0], "STEPS", steps, flush=True)
"""


def _child(tmp_path, *args, threads="2"):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**child_env(), "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), REPO, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _bit(sig):
    return 1 << (int(sig) - 1)


def test_openmp_workers_block_signals_and_main_thread_has_alt_stack(tmp_path):
    proc = _child(tmp_path, "masks")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    line = next(l for l in out.splitlines() if l.startswith("MASKS "))
    report = json.loads(line[len("MASKS "):])
    assert "OpenMP workers started with signals blocked: 1" in report["status"], report["status"]
    assert report["alt_stack"] >= 1 << 16
    masks = {int(tid): m for tid, m in report["masks"].items()}   # thread id: SigBlk
    main = report["main"]
    stop_signals = _bit(signal.SIGINT) | _bit(signal.SIGTERM) | _bit(signal.SIGUSR1)
    assert masks[main] & stop_signals == 0, "the main thread must still take the signals"
    workers = [tid for tid in masks if tid != main]
    assert workers, "no OpenMP worker thread found"
    for tid in workers:
        assert masks[tid] & stop_signals == stop_signals, (tid, hex(masks[tid]))
        assert masks[tid] & _bit(signal.SIGSEGV) == 0, "faults must stay deliverable"


def test_signal_storm_during_matrix_products_leaves_the_heap_intact(tmp_path):
    """SIGUSR1 every ~2 ms for 8 s while the process runs oneDNN products, a Python
    handler counting them: the process must end normally."""
    proc = _child(tmp_path, "storm", "8")
    first = proc.stdout.readline()
    while first and not first.startswith("READY"):
        first = proc.stdout.readline()
    assert first.startswith("READY"), proc.communicate(timeout=60)[0][-3000:]
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        try:
            os.kill(proc.pid, signal.SIGUSR1)
        except ProcessLookupError:
            break
        time.sleep(0.002)
    if proc.poll() is None:
        proc.kill()
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, f"status {proc.returncode}: {out[-3000:]}"
    handled = int(out.split("HANDLED", 1)[1].split()[0])
    assert handled > 50, out[-3000:]
