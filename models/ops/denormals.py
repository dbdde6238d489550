"""Flush-to-zero / denormals-are-zero for the main thread, set once at start-up.

Jittor builds its CPU kernels with ``-Ofast``; loading such a library switches the
*loading thread* to FTZ/DAZ, and which thread loads which kernel first (the main
thread or a parallel-compiler thread) depends on the process's history. A resumed
run would then switch at another moment than an uninterrupted one and round values
below 1e-38 (Adam's second moments of tiny gradients) differently. Setting the mode
once, before any compute thread exists, makes it the same in every run.

There is nothing to differentiate and no plain formulation: with the fused kernels
switched off the mode is left alone.
"""
import numpy as np
import jittor as jt

from ._common import fused_for

_FTZ_HEADER = """
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif
"""
# MXCSR bit 15 is flush-to-zero, bit 6 denormals-are-zero.
_FTZ_SRC = """
#if defined(__x86_64__) || defined(__i386__)
_mm_setcsr(_mm_getcsr() | 0x8040);
@out(0) = 1;
#else
@out(0) = 0;
#endif
"""


def can_use():
    """On the CPU with the fused kernels on (the kernel itself reports non-x86 CPUs)."""
    return fused_for()


def flush_to_zero():
    """Switch the main thread to FTZ + DAZ now; True when tiny products then come out as 0.

    False where it does not apply (not an x86 CPU, or fused kernels switched off).
    """
    if not can_use():
        return False
    done = jt.code((1,), "int32", [], cpu_header=_FTZ_HEADER, cpu_src=_FTZ_SRC)
    if not int(done.item()):
        return False
    tiny = jt.array(np.full((2,), 1e-20, dtype=np.float32))
    return float((tiny * tiny).sum().item()) == 0.0
