"""Signals must not land on a thread inside oneDNN's generated matrix-product code.

oneDNN's JIT f32 GEMM kernels (the AVX2 and AVX-512 ones behind ``dnnl_sgemm``, which
Jittor's matmul calls) point the stack register at a heap buffer while they run
(oneDNN issue #4845, fixed upstream in 2026 by PR #4855, after the versions Linux
distributions ship). A signal delivered to a thread in such a kernel has its frame
(about 3.5 KB with the AVX-512 registers) written below that stack pointer, i.e. into
the heap; glibc aborts later ("corrupted size vs. prev_size") or the process segfaults.
Seen as one rank of an MPI job dying on 1 in 30 (quiet machine) to 1 in 5 (busy) of
a test's Ctrl-C's (mpirun forwards SIGUSR1 to the ranks), and reproduced in one
process by sending SIGUSR1 every few milliseconds while it trains DFormer-Tiny: a
crash within seconds, with or without our fused kernels, even with a C handler that
does nothing.

:func:`shield` takes two measures, once, before any compute thread exists:

1. the main thread gets an alternate signal stack. Python installs its handlers with
   ``SA_ONSTACK``, so their frames go there instead of below the stack pointer;
2. the OpenMP worker threads, which oneDNN and our kernels share, are started at once
   while the main thread blocks every asynchronous signal, and keep that mask: the
   kernel then never picks one of them for a process-directed signal. The main thread
   unblocks them again, so signal handling is otherwise unchanged.

Fault signals (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS) stay unblocked.
"""
import ctypes
import functools
import os
import signal
import threading

STATUS = "not set"

_ALT_STACK_BYTES = 1 << 16
_SS_DISABLE = 2
_FAULTS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT,
           signal.SIGTRAP, signal.SIGSYS}
_DONE = False


class _StackT(ctypes.Structure):
    """``stack_t`` of <signal.h>."""
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                ("ss_size", ctypes.c_size_t)]


def asynchronous_signals():
    """The signals the OpenMP workers block: all but the faults (and the unblockable)."""
    return signal.valid_signals() - _FAULTS - {signal.SIGKILL, signal.SIGSTOP}


@functools.lru_cache(maxsize=None)
def _libc():
    return ctypes.CDLL("libc.so.6", use_errno=True)


def alt_stack_size():
    """Size of the calling thread's alternate signal stack (0 when it has none)."""
    current = _StackT()
    if _libc().sigaltstack(None, ctypes.byref(current)) != 0:
        return 0
    return 0 if current.ss_flags & _SS_DISABLE else int(current.ss_size)


def _give_main_thread_alt_stack():
    libc = _libc()
    if alt_stack_size() >= _ALT_STACK_BYTES:   # e.g. faulthandler's, when large enough
        return True
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    memory = libc.malloc(_ALT_STACK_BYTES)     # for the life of the process, never freed
    if not memory:
        return False
    stack = _StackT(memory, 0, _ALT_STACK_BYTES)
    return libc.sigaltstack(ctypes.byref(stack), None) == 0


def _thread_count():
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


def _start_openmp_workers_masked():
    """Run one empty OpenMP parallel region (each thread calls ``free(NULL)``) with the
    asynchronous signals blocked: libgomp creates its worker threads there, and they
    keep the creator's mask. Returns how many threads it started."""
    try:
        gomp = ctypes.CDLL("libgomp.so.1")
        parallel = gomp.GOMP_parallel
    except (OSError, AttributeError):
        return None
    parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    if gomp.omp_get_max_threads() <= 1:
        return 0
    before = _thread_count()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, asynchronous_signals())
    try:
        parallel(ctypes.cast(_libc().free, ctypes.c_void_p), None, 0, 0)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return _thread_count() - before


def shield():
    """Take both measures (see the module docstring); call from the main thread before
    any OpenMP work. Idempotent; :data:`STATUS` says what was done."""
    global STATUS, _DONE
    if _DONE:
        return STATUS
    _DONE = True
    if not os.path.isdir("/proc/self/task") or \
            threading.current_thread() is not threading.main_thread():
        STATUS = "not applicable"
        return STATUS
    try:
        _libc()
    except OSError:
        STATUS = "not applicable (no glibc)"
        return STATUS
    alt = _give_main_thread_alt_stack()
    started = _start_openmp_workers_masked()
    parts = ["main thread alternate stack" if alt else "no alternate stack (sigaltstack failed)"]
    if started is None:
        parts.append("no libgomp")
    elif started > 0:
        parts.append(f"OpenMP workers started with signals blocked: {started}")
    else:
        parts.append("no OpenMP worker started (one thread, or they existed before)")
    STATUS = ", ".join(parts)
    return STATUS
