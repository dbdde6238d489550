"""Typed errors for problems a user can fix, and the one way entry points report them.

Every known problem (missing or unknown config, bad option, missing/corrupt/mismatched
checkpoint, bad data or input image) raises a subclass of :class:`UserError` whose
message is one line naming the file or key and what to do. Entry points run their
``main`` through :func:`run_cli`, which prints that line as ``error: ...`` and exits
with status 2, without a traceback (``--debug`` or ``DFORMER_DEBUG=1`` shows it).
Unexpected exceptions keep their traceback. Under MPI only rank 0 prints.

``UserError``, ``ConfigError`` and ``KeywordError`` (a ``ConfigError`` that is also a
``TypeError``: unknown or missing keywords) live in ``models.errors``, the package below this
one, and are re-exported here. This module imports neither Jittor nor numpy, so it is safe
anywhere (``models/__init__.py`` imports nothing).
"""
import argparse
import os
import sys
import traceback

from models.errors import ConfigError, KeywordError, UserError

__all__ = ["UserError", "ConfigError", "KeywordError", "CheckpointError", "DataError",
           "InputError", "ArgumentParser", "debug_enabled", "mpi_rank", "run_cli"]


class CheckpointError(UserError, RuntimeError):
    """Missing, unreadable or non-fitting checkpoint."""


class DataError(UserError, ValueError):
    """Bad or missing data; the message names the offending file."""


class InputError(UserError, ValueError):
    """An input image (inference) that cannot be used; the message names the file."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors (unknown or malformed options, ``p.error``)
    raise ConfigError, so that they too end as one ``error:`` line under :func:`run_cli`."""

    def error(self, message):
        raise ConfigError(f"{message} (see {self.prog} --help)")


def debug_enabled(argv=None):
    """True when ``--debug`` is among the arguments or ``DFORMER_DEBUG`` is set (not 0)."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("DFORMER_DEBUG", "0") not in ("", "0")


def mpi_rank():
    """This process's MPI rank from the launcher's environment (0 outside MPI)."""
    for key in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def mpi_world_size():
    """The number of MPI ranks from the launcher's environment (1 outside MPI)."""
    for key in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 1


def _end_rank_now(status):
    """End this MPI rank at once, skipping the interpreter's exit handlers: Jittor's
    MPI_Finalize would wait for the other ranks, which wait in their next collective for
    this one (a hang); a rank that is simply gone is what makes mpirun end the job."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run_cli(main, argv=None):
    """Run ``main(argv)`` and exit with its status; a UserError becomes one ``error:`` line.

    ``--debug`` is removed from ``argv`` before ``main`` sees it. Under MPI, an exception
    the ranks did not agree on (anything but a UserError, which they do agree on) ends this
    rank at once with its traceback, so mpirun ends the others instead of all waiting.
    """
    raw = sys.argv[1:] if argv is None else list(argv)
    debug = debug_enabled(raw)
    args = [a for a in raw if a != "--debug"]
    try:
        status = main(args)
    except UserError as exc:
        if debug:
            raise
        if mpi_rank() == 0:
            message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        if debug and mpi_world_size() == 1:
            raise
        print("interrupted", file=sys.stderr, flush=True)
        if mpi_world_size() > 1:
            _end_rank_now(130)
        sys.exit(130)
    except Exception:
        if mpi_world_size() == 1:
            raise
        traceback.print_exc()
        print(f"error: rank {mpi_rank()} failed with the exception above; ending it so that "
              f"mpirun ends the job", file=sys.stderr)
        _end_rank_now(1)
    sys.exit(status if isinstance(status, int) else 0)
