"""What MPI ranks tell each other so that a failure on one rank stops them all.

Every rank of an ``mpirun -np N`` job runs the same collectives (SyncBN's statistics,
the gradient and loss all-reduces) in the same order; a rank that leaves the loop alone
(a corrupt file, a stop signal) would leave the others waiting in their next collective
for ever. So before each collective-bearing step the ranks *agree*: one small
all-reduce of a vector holding one "failed" flag per rank and one "stop requested" flag
(:func:`agree`). When a rank failed, every rank raises at the same point: the failing
one its own exception, the others :class:`PeerFailure` carrying the failing rank's
message, so rank 0 (the only one that prints and writes checkpoints) can report it.
Such exceptions are marked (:func:`raised_on_all_ranks`): ``mpirun`` ends the whole job as
soon as one rank exits with a non-zero status, so only rank 0 may (utils/train.py).

Without MPI every function is a local no-op (one process agrees with itself).
"""
import numpy as np

import jittor as jt

from utils.errors import UserError

MESSAGE_BYTES = 1024  # a failure message travels as this many UTF-8 bytes (truncated)


class PeerFailure(UserError):
    """Another MPI rank failed; this rank stopped with it, at the same iteration."""


def world_size():
    return jt.world_size if jt.in_mpi else 1


def rank():
    return jt.rank if jt.in_mpi else 0


def is_main_process():
    return rank() == 0


def _all_reduce_sum(values):
    return jt.array(np.asarray(values, dtype=np.float64), dtype="float64") \
        .mpi_all_reduce("add").numpy()


def agree(failure=None, stop=False, where=""):
    """Tell every rank whether any rank failed or wants to stop; returns True when some
    rank asked to stop, raises when some rank failed.

    ``failure``: the exception this rank hit (None when fine); ``where``: the point of
    the run, for the message of the ranks that did not fail themselves.
    """
    if not jt.in_mpi:
        if failure is not None:
            raise failure
        return bool(stop)
    n = jt.world_size
    flags = np.zeros(n + 1)
    flags[jt.rank] = failure is not None
    flags[n] = bool(stop)
    total = _all_reduce_sum(flags)
    failed = [r for r in range(n) if total[r] > 0]
    if failed:
        message = _share_message(failed[0], failure)
        if failure is None:
            failure = PeerFailure(f"rank {failed[0]} failed{' ' + where if where else ''}: "
                                  f"{message}" + (f" (ranks {failed} failed)"
                                                  if len(failed) > 1 else ""))
        raise mark_agreed(failure)
    return total[n] > 0


def mark_agreed(exc):
    """Note on ``exc`` that every rank raises at this point (returns ``exc``)."""
    exc.raised_on_all_ranks = True
    return exc


def raised_on_all_ranks(exc):
    """True for an exception that every rank raised at the same point (:func:`agree`, or
    a check of an all-reduced value)."""
    return bool(getattr(exc, "raised_on_all_ranks", False))


def _share_message(source, failure):
    """Every rank gets the one-line message of ``failure`` on rank ``source``."""
    buffer = np.zeros(MESSAGE_BYTES)
    if jt.rank == source:
        text = " ".join(str(failure).split()) or type(failure).__name__
        if not isinstance(failure, UserError):
            text = f"{type(failure).__name__}: {text}"
        data = text.encode("utf-8")[:MESSAGE_BYTES]
        buffer[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    data = np.rint(_all_reduce_sum(buffer)).astype(np.uint8).tobytes().rstrip(b"\0")
    return data.decode("utf-8", errors="replace")
