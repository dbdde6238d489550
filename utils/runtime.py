"""Process-wide Jittor set-up: every entry point calls :func:`setup` before ``import jittor``.

Importing this module changes nothing. :func:`setup` does five things, once per
process:

1. Decides the CUDA set-up before Jittor looks (:mod:`utils.cuda_toolkit`): ``nvcc``
   is hidden when no CUDA driver is present (Jittor otherwise compiles CUDA kernels
   at import and crashes), and with a driver Jittor is pointed at the installed
   toolkit so that it never downloads one.
2. Makes oneDNN available offline. Jittor downloads a oneDNN 2.2 build into
   ``~/.cache/jittor/mkl`` at import; without network that fails. A system oneDNN
   (Debian/Ubuntu ``libdnnl-dev``) is API-compatible, so we expose it under the
   folder name Jittor looks for. The folder is assembled in a temporary
   directory and renamed into place, so an interrupted run never leaves a
   half-written cache behind.
3. Falls back to ``use_mkl=0`` with one clear warning when no oneDNN exists
   (CPU convolutions are then roughly two orders of magnitude slower).
4. Tunes glibc's malloc for this workload (see :func:`_tune_malloc`); set
   ``DFORMER_MALLOC_TUNING=0`` to keep the defaults.
5. Compiles Jittor's kernels in this process (:func:`_serial_kernel_compiles`),
   faster (:mod:`utils.kernel_compile`).
6. Runs the command again when ``import jittor`` exits to ask for it (:func:`_run_again_on_exit`).

Then :func:`init_device`, after importing jittor, selects CPU or CUDA and, on the
CPU, switches to flush-to-zero (values below 1e-38 become 0; see
:mod:`models.ops.denormals`) for training and inference alike; then it keeps signals
off the threads that run oneDNN's matrix products (:mod:`utils.signal_safety`).
"""
import ctypes
import glob
import json
import os
import shutil
import sys
import tempfile
import warnings

from utils import cuda_toolkit, jittor_import, kernel_compile, signal_safety

_DNNL_DIRNAME = "dnnl_lnx_2.2.0_cpu_gomp"  # the folder name jittor's setup_mkl expects
_SYSTEM_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                    "/usr/lib", "/usr/local/lib")
_SYSTEM_INCLUDE_DIRS = ("/usr/include", "/usr/local/include")
_FIX_HINT = ("Install oneDNN (Debian/Ubuntu: `apt-get install libdnnl-dev`) and run again; "
             "`bash run_tests.sh` and `bash quickstart.sh` do this for you.")

DNNL_STATUS = "not checked"


def _has_cuda_driver():
    """True when a CUDA driver library can be loaded (a GPU runtime exists)."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def _find_system_dnnl():
    """Return (include_dir, library_path) of a system oneDNN, or None."""
    for inc in _SYSTEM_INCLUDE_DIRS:
        if not os.path.isfile(os.path.join(inc, "dnnl.h")):
            continue
        for libdir in _SYSTEM_LIB_DIRS:
            for cand in ("libdnnl.so", "libdnnl.so.3", "libdnnl.so.2"):
                path = os.path.join(libdir, cand)
                if os.path.exists(path):
                    return inc, os.path.realpath(path)
    return None


def _dnnl_ready(folder):
    return (os.path.isfile(os.path.join(folder, "lib", "libmkldnn.so"))
            and os.path.isfile(os.path.join(folder, "include", "dnnl.h")))


def _install_dnnl_link(mkl_root, include_dir, lib_path):
    """Atomically create mkl_root/<_DNNL_DIRNAME> pointing at the system oneDNN."""
    os.makedirs(mkl_root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".dnnl-tmp-", dir=mkl_root)
    try:
        os.makedirs(os.path.join(tmp, "include"))
        os.makedirs(os.path.join(tmp, "lib"))
        # Headers: dnnl*.h / *.hpp plus the oneapi/ tree newer releases use.
        for path in glob.glob(os.path.join(include_dir, "dnnl*")) + \
                glob.glob(os.path.join(include_dir, "oneapi")):
            os.symlink(path, os.path.join(tmp, "include", os.path.basename(path)))
        os.symlink(lib_path, os.path.join(tmp, "lib", "libmkldnn.so"))
        final = os.path.join(mkl_root, _DNNL_DIRNAME)
        if os.path.lexists(final):
            shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _jittor_home():
    """The folder Jittor keeps its cache under: $JITTOR_HOME, else the one Jittor remembered
    in ~/.cache/jittor/config.json (it records any JITTOR_HOME it was once given), else ~."""
    if os.environ.get("JITTOR_HOME"):
        return os.environ["JITTOR_HOME"]
    try:
        with open(os.path.join(os.path.expanduser("~"), ".cache", "jittor", "config.json")) as f:
            home = json.load(f).get("JITTOR_HOME")
    except (OSError, ValueError, AttributeError):
        home = None
    return home or os.path.expanduser("~")


def _setup_dnnl():
    global DNNL_STATUS
    if os.environ.get("use_mkl") == "0":
        DNNL_STATUS = "disabled by use_mkl=0"
        return
    if os.environ.get("mkl_include_path") and os.environ.get("mkl_lib_path"):
        DNNL_STATUS = "user-provided"
        return
    home = _jittor_home()
    mkl_root = os.path.join(home, ".cache", "jittor", "mkl")
    folder = os.path.join(mkl_root, _DNNL_DIRNAME)
    # Remove leftovers of an interrupted earlier set-up.
    for stale in glob.glob(os.path.join(mkl_root, ".dnnl-tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)
    if _dnnl_ready(folder):
        DNNL_STATUS = f"oneDNN at {os.path.realpath(os.path.join(folder, 'lib', 'libmkldnn.so'))}"
        return
    if os.path.lexists(folder):  # broken links or a partial download: start over
        shutil.rmtree(folder, ignore_errors=True)
    found = _find_system_dnnl()
    if found is None:
        os.environ["use_mkl"] = "0"
        DNNL_STATUS = "not found: use_mkl=0"
        warnings.warn("oneDNN not found: Jittor will run without it (use_mkl=0), so CPU "
                      "convolutions and matrix products will be very slow. " + _FIX_HINT,
                      RuntimeWarning, stacklevel=3)
        return
    try:
        _install_dnnl_link(mkl_root, *found)
    except OSError as exc:
        os.environ["use_mkl"] = "0"
        DNNL_STATUS = f"link failed ({exc}): use_mkl=0"
        warnings.warn(f"Could not expose the system oneDNN to Jittor ({exc}); running with "
                      "use_mkl=0, CPU convolutions will be very slow. " + _FIX_HINT,
                      RuntimeWarning, stacklevel=3)
        return
    DNNL_STATUS = f"oneDNN at {found[1]}"


def _setup_cuda():
    cuda_toolkit.configure(_has_cuda_driver(), os.path.join(_jittor_home(), ".cache", "jittor"))


MALLOC_STATUS = "default"

_M_TRIM_THRESHOLD = -1   # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4


def _tune_malloc():
    """Keep freed memory in the process instead of returning it to the kernel.

    By default glibc serves large requests (feature maps) with fresh ``mmap``
    pages and unmaps them on ``free``, so every call pays page faults and
    zero-filling on its large temporaries again: for the outputs of the OpenMP
    CPU kernels that is about as much time as the element-wise pass itself.
    With mmap off and a high trim threshold the heap keeps its pages after the
    first call and reuses them. Jittor's allocator already caches most blocks,
    so whole models gain only a few percent. The process does not shrink back
    between calls; its peak is unchanged.
    """
    global MALLOC_STATUS
    if os.environ.get("DFORMER_MALLOC_TUNING", "1") == "0":
        MALLOC_STATUS = "default (DFORMER_MALLOC_TUNING=0)"
        return
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and ok
    except (OSError, AttributeError):   # not glibc
        return
    MALLOC_STATUS = "no mmap, trim threshold 1 GiB" if ok else "mallopt failed"


def _cache_float_limits():
    """Compute numpy's float limits now, before Jittor's ``-Ofast`` kernels switch threads to
    flush-to-zero: ``np.finfo`` caches them, so later calls (in numpy, tqdm, evaluation)
    neither see a zero "smallest subnormal" nor warn about it."""
    import numpy as np
    for dtype in (np.float16, np.float32, np.float64, np.longdouble):
        np.finfo(dtype)


_DONE = False


def _serial_kernel_compiles():
    """Compile Jittor's kernels in this process, one g++ at a time.

    Otherwise Jittor forks a pool of up to 16 compiler processes the first time it needs
    several kernels at once, which is usually mid-run, from a process that already runs
    OpenMP and loader threads: such forks were seen to deadlock (the run hangs in its
    first steps of a new shape) and its parallel op compiler to fail at random ("Check
    failed: member.size() <= var_num"). ``DFORMER_PARALLEL_COMPILE=1`` keeps Jittor's
    pool; install.sh uses it for the one-time core compile, in a fresh process.
    """
    if os.environ.get("DFORMER_PARALLEL_COMPILE", "0") != "1":
        os.environ.setdefault("DISABLE_MULTIPROCESSING", "1")


_RESTARTED = "DFORMER_JITTOR_RESTARTED"


def _run_again_on_exit(run, module):
    """Runs the command again in a fresh process when ``import jittor`` asks for it.

    When Jittor rebuilds its utility library (jit_utils) in a cache that already had one (a
    new compiler, a copied cache) it logs "please rerun your command" and calls
    ``sys.exit(0)`` in the middle of the import: under ``log_silent`` the process ended with
    status 0 and no output, nothing done. The rebuilt library loads in a new process, so the
    command is run again (``sys.orig_argv``, once); a second request is an error.
    """
    try:
        run(module)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
        _restart()


def _restart():
    if os.environ.get(_RESTARTED) == "1":
        raise SystemExit("error: Jittor asked again for a restart after rebuilding its "
                         "utilities; run the command with log_silent=0 to see why")
    print("[runtime] Jittor rebuilt its utility library and needs a new process: running "
          "the command again", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.environ[_RESTARTED] = "1"
    os.execv(sys.executable, sys.orig_argv)


def setup():
    """Prepare the environment Jittor reads at import (see the module docstring); idempotent."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    _cache_float_limits()
    if "jittor" in sys.modules:
        warnings.warn("utils.runtime.setup() called after jittor was imported: the CPU/CUDA and "
                      "oneDNN set-up may not take effect.", RuntimeWarning, stacklevel=2)
    os.environ.setdefault("log_silent", "1")  # keep Jittor's compile chatter out of the logs
    _serial_kernel_compiles()
    jittor_import.wrap(_run_again_on_exit, "restart")
    kernel_compile.install()
    _setup_cuda()
    _setup_dnnl()
    _tune_malloc()


def _default_sigchld():
    """Undo Jittor's SIGCHLD handler, which ends this process at once (nothing saved, no
    message under ``log_silent``) whenever any child process dies from a signal. It exists
    for Jittor's process-based data workers; our loader uses threads, and a child of ours
    that crashes (a compiler killed for memory, a test's subprocess) must be reported by
    whoever started it, not take the run down."""
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


FTZ_STATUS = "not set"


def init_device(use_cuda=None):
    """Select the device: CUDA when Jittor finds one (or when forced), else CPU.

    On the CPU the main thread also goes to flush-to-zero mode before any compute
    thread starts: denormal products (DFormer-B inference with random weights makes
    them) are slow in the x86 FPU, and would make a resumed run round differently
    from an uninterrupted one. Then the OpenMP workers start with asynchronous signals
    blocked (:mod:`utils.signal_safety`). Returns "cuda" or "cpu".
    """
    global FTZ_STATUS
    import jittor as jt
    _default_sigchld()
    auto = use_cuda is None
    if auto:
        use_cuda = bool(jt.has_cuda)
    if use_cuda and not jt.has_cuda:
        from utils.errors import ConfigError
        raise ConfigError(f"CUDA was requested but Jittor found no usable GPU/CUDA runtime "
                          f"(CUDA: {cuda_toolkit.STATUS}); use --device cpu (or auto), or "
                          f"fix the CUDA set-up (README, section GPU)")
    if auto and not use_cuda and cuda_toolkit.STATUS.startswith("driver found"):
        warnings.warn(f"Running on the CPU although a GPU driver exists: {cuda_toolkit.STATUS}",
                      RuntimeWarning, stacklevel=2)
    jt.flags.use_cuda = 1 if use_cuda else 0
    if use_cuda:
        FTZ_STATUS = "n/a (CUDA)"
    else:
        from models.ops import flush_to_zero
        FTZ_STATUS = "on" if flush_to_zero() else "off"
    # after flush-to-zero: the OpenMP workers started here inherit it
    signal_safety.shield()
    return "cuda" if use_cuda else "cpu"


def require_cuda():
    """Exit with one line naming what is missing unless Jittor can use CUDA (install.sh --cuda)."""
    setup()
    if not cuda_toolkit.USABLE:
        sys.exit(f"[install] CUDA not usable: {cuda_toolkit.STATUS}")
    print(f"[install] CUDA: {cuda_toolkit.STATUS}")


def describe():
    """One line describing the runtime, for logs and benchmarks."""
    import jittor as jt
    device = "cuda" if jt.flags.use_cuda else "cpu"
    return (f"jittor {jt.__version__}, device {device}, CUDA: {cuda_toolkit.STATUS}, "
            f"threads {os.cpu_count()}, "
            f"oneDNN: {DNNL_STATUS}, malloc: {MALLOC_STATUS}, kernel compiles: "
            f"{kernel_compile.STATUS}, flush-to-zero: {FTZ_STATUS}, "
            f"signals: {signal_safety.STATUS}")
