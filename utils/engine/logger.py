"""Run logging: a text log file plus TensorBoard scalars, written by rank 0 only.

The text log follows the reference's format ("time - file[line:N] - LEVEL: message"),
goes to ``<work_dir>/log_<YYYY_mm_dd_HH_MM_SS>.log`` and to stderr. Other MPI ranks get
a logger that only shows errors on stderr, and a TensorBoard writer that
does nothing.
"""
import logging
import os
import sys
import time

LOG_FORMAT = "%(asctime)s - %(filename)s[line:%(lineno)d] - %(levelname)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class TqdmHandler(logging.StreamHandler):
    """Console handler that prints through ``tqdm.write`` so progress bars stay intact."""

    def emit(self, record):
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # logging must never raise
            self.handleError(record)


def get_logger(work_dir=None, rank=0, name="dformer.train", stream=None):
    """Logger writing INFO+ to a new log file in ``work_dir`` and to ``stream`` (stderr).

    Returns ``(logger, log_file_path or None)``. Calling it again replaces the handlers,
    so one process can run several trainings (tests) without duplicate lines.
    """
    logger = logging.getLogger(f"{name}.{rank}")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    formatter = logging.Formatter(LOG_FORMAT, DATE_FORMAT)
    console = TqdmHandler(stream or sys.stderr)
    console.setFormatter(formatter)
    logger.addHandler(console)
    path = None
    if rank == 0:
        logger.setLevel(logging.INFO)
        if work_dir:
            os.makedirs(work_dir, exist_ok=True)
            path = os.path.join(work_dir, time.strftime("log_%Y_%m_%d_%H_%M_%S.log"))
            file_handler = logging.FileHandler(path)
            file_handler.setFormatter(formatter)
            logger.addHandler(file_handler)
    else:
        logger.setLevel(logging.ERROR)
    return logger, path


def close_logger(logger):
    """Flush and detach every handler (file handles are released)."""
    for handler in list(logger.handlers):
        handler.flush()
        logger.removeHandler(handler)
        handler.close()


class NullWriter:
    """Stands in for a SummaryWriter on ranks that must not write."""

    log_dir = None

    def add_scalar(self, *args, **kwargs):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def tensorboard_writer(work_dir, rank=0, logger=None):
    """tensorboardX SummaryWriter in ``<work_dir>/tb`` on rank 0, else a NullWriter.

    A missing tensorboardX is reported once and replaced by a NullWriter.
    """
    if rank != 0 or not work_dir:
        return NullWriter()
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        if logger is not None:
            logger.warning("tensorboardX is not installed: no TensorBoard scalars will be "
                           "written (pip install tensorboardX).")
        return NullWriter()
    return SummaryWriter(log_dir=os.path.join(work_dir, "tb"))
