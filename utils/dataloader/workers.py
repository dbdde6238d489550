"""Batches prepared by worker threads, delivered strictly in order, stopped in bounded time.

Why threads, not processes
--------------------------
The loader used to fork a ``multiprocessing.Pool`` lazily, from a process that already ran
Jittor's and OpenMP's threads and had installed the trainer's SIGINT/SIGTERM handlers. The
forked workers inherited those handlers, so ``Pool.terminate()`` (also run at interpreter
exit) could wait forever on a worker that ignored its SIGTERM, and a worker that died left
the pool waiting for a result that never came. Worker *processes* have a second problem in
a Jittor process: Jittor's own SIGCHLD handler ends the whole process at once ("Caught
SIGCHLD ... quick exit", nothing saved) when any child dies from a signal other than
SIGTERM, so an out-of-memory kill of one worker would take the run down with it. Threads
share the process: nothing is forked, inherited or reaped, and the only way to lose a worker
is an exception, which is reported. The cost: Jittor keeps the GIL while it executes, so
batches are prepared between (not during) Jittor's computations; decoding, resizing and the
numpy arithmetic release the GIL, so the workers still run in parallel with each other.
Measurements are in the README ("Data loading").

Failure behaviour
-----------------
* An exception while preparing batch ``k`` is raised by the consumer when batch ``k`` is
  due (the batches before it are still delivered, in order), after the workers are stopped.
* A batch that is not ready ``timeout`` seconds after it is due raises
  :class:`LoaderTimeout` naming its files: a read that hangs (a stale network mount)
  cannot hang a run. Workers that all ended without producing it raise at once.
* :meth:`OrderedPrefetcher.close` (also called at the end of the pass, on an error and when
  the consumer drops the iterator) returns within ``close_timeout`` seconds: workers finish
  at most the batch in hand. They are daemon threads, so even a read that never returns
  cannot keep the interpreter from exiting.

This module imports neither Jittor nor OpenCV.
"""
import threading
import time

from utils.errors import DataError

__all__ = ["LoaderTimeout", "OrderedPrefetcher"]

_POLL_S = 0.5  # how often a waiting consumer checks that workers are still alive


class LoaderTimeout(DataError):
    """A batch was not ready in time (a stuck read); the message names its files."""


class OrderedPrefetcher:
    """Iterator over ``load(chunk)`` for ``chunks`` in order, computed by ``workers`` threads.

    At most ``ahead`` batches (default ``2 * workers``) are prepared beyond the one the
    consumer waits for. ``describe(chunk)`` (optional) names a chunk's files in messages.
    """

    def __init__(self, load, chunks, workers, ahead=None, timeout=None, describe=None,
                 close_timeout=2.0, name="loader"):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self._load, self._chunks, self._describe = load, list(chunks), describe
        self._ahead = max(int(ahead or 2 * workers), 1)
        self._timeout = None if timeout is None or timeout <= 0 else float(timeout)
        self._close_timeout = float(close_timeout)
        self._cond = threading.Condition()
        self._results = {}          # k -> (ok, batch or exception)
        self._next_task = 0         # next chunk a worker takes
        self._next_out = 0          # next batch the consumer gets
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(min(workers, max(len(self._chunks), 1)))]
        for thread in self._threads:
            thread.start()

    # -- workers

    def _take(self):
        """Index of the next chunk to prepare, or None when there is none (or we stop)."""
        with self._cond:
            while not self._stopped and self._next_task < len(self._chunks) \
                    and self._next_task >= self._next_out + self._ahead:
                self._cond.wait()
            if self._stopped or self._next_task >= len(self._chunks):
                return None
            k, self._next_task = self._next_task, self._next_task + 1
            return k

    def _work(self):
        while True:
            k = self._take()
            if k is None:
                return
            try:
                result = (True, self._load(self._chunks[k]))
            except BaseException as exc:  # noqa: B902  (delivered to the consumer)
                result = (False, exc)
            with self._cond:
                if self._stopped:
                    return
                self._results[k] = result
                self._cond.notify_all()
                if not result[0]:
                    return  # later batches are never delivered after an error

    # -- consumer

    def __iter__(self):
        return self

    def __next__(self):
        k = self._next_out
        if k >= len(self._chunks) or self._stopped:
            self.close()
            raise StopIteration
        ok, value = self._wait_for(k)
        if not ok:
            self.close()
            raise value
        return value

    def _wait_for(self, k):
        start = time.monotonic()
        with self._cond:
            while k not in self._results:
                waited = time.monotonic() - start
                if self._timeout is not None and waited >= self._timeout:
                    break
                if not any(t.is_alive() for t in self._threads):
                    break
                step = _POLL_S if self._timeout is None else \
                    min(_POLL_S, self._timeout - waited)
                self._cond.wait(step)
            if k in self._results:
                self._next_out = k + 1
                self._cond.notify_all()
                return self._results.pop(k)
        self.close()
        files = f" ({self._describe(self._chunks[k])})" if self._describe else ""
        if any(t.is_alive() for t in self._threads):
            raise LoaderTimeout(f"the data loader did not produce batch {k} within "
                                f"{self._timeout:g}s{files}: a file read is stuck (network "
                                "storage?); fix the storage or raise loader_timeout")
        raise RuntimeError(f"the data loader's workers ended without producing batch {k}{files}")

    def close(self):
        """Stop the workers; returns within ``close_timeout`` seconds whatever they do."""
        with self._cond:
            self._stopped = True
            self._results.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + self._close_timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(deadline - time.monotonic(), 0.0))

    def alive_workers(self):
        """Number of worker threads still running (for tests and diagnostics)."""
        return sum(t.is_alive() for t in self._threads)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
