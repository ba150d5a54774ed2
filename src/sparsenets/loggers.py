"""Per-step loggers of a training run: ``steps.csv`` (default) and TensorBoard.

A record is a flat ``{column: value}`` dict, one per optimizer step, built by
:class:`StepRecorder`::

    step, epoch, loss, lr                                   every run
    density, itop_rate, churn, topology_seconds,            runs with a sparsifier
    density/<layer> ...

``step`` is the global optimizer step (1-based). A value that does not apply to a step (``churn``
outside topology updates) is ``None``: an empty CSV cell, no TensorBoard point.

Resuming from a checkpoint taken after step ``N`` continues the same files: rows of steps past
``N`` (written after the checkpoint, before the interruption) are dropped from ``steps.csv``, and
TensorBoard hides them (``purge_step=N + 1``), so an interrupted-then-resumed run leaves what an
uninterrupted one would.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import SparsenetsError, choice_error
from .io import write_text

if TYPE_CHECKING:
    from .dst import DynamicSparsity

log = logging.getLogger(__name__)

#: Logger names (recipe ``loggers:``, ``--logger``) and what each writes inside the run directory.
LOGGERS = {"csv": "steps.csv", "tensorboard": "tensorboard/"}


class StepLogger(Protocol):
    """What every per-step logger does."""

    def log_step(self, record: Mapping[str, Any]) -> None:
        """Record one optimizer step (``record["step"]`` is the global step)."""

    def flush(self) -> None:
        """Make everything logged so far durable (called before each checkpoint)."""

    def close(self) -> None:
        """Flush and release the files."""


class _Closing:
    """Context-manager support: ``with CSVLogger(...) as logger: ...`` closes it."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # type: ignore[attr-defined]


class CSVLogger(_Closing):
    """One CSV row per step in ``<run_dir>/steps.csv``.

    The columns are fixed by the first record (a resumed run keeps the file's header); keys a
    later record adds are dropped with a warning, missing or ``None`` values are empty cells.
    Rows are flushed at least every ``flush_seconds`` and at :meth:`flush` / :meth:`close`.

    Args:
        run_dir: the run directory.
        resume_step: continue the file of a run resumed after this step (rows past it are
            dropped); None starts a new file.
        flush_seconds: longest time a written row may stay in the buffer.
    """

    def __init__(self, run_dir: str | Path, *, resume_step: int | None = None, flush_seconds: float = 10.0):
        self.path = Path(run_dir) / LOGGERS["csv"]
        self.flush_seconds = flush_seconds
        self._columns: list[str] | None = None
        self._warned = False
        if resume_step is not None and self.path.is_file():
            self._columns = _truncate_csv(self.path, resume_step)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a" if self._columns else "w", newline="")
        self._writer: csv.DictWriter | None = None
        self._last_flush = time.monotonic()

    def log_step(self, record: Mapping[str, Any]) -> None:
        if self._writer is None:
            new = self._columns is None
            self._columns = self._columns or list(record)
            self._writer = csv.DictWriter(self._file, self._columns, restval="", extrasaction="ignore",
                                          lineterminator="\n")
            if new:
                self._writer.writeheader()
        if not self._warned and set(record) - set(self._columns):
            log.warning("%s: columns %s are not in its header and are not written",
                        self.path, sorted(set(record) - set(self._columns)))
            self._warned = True
        self._writer.writerow(record)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self._file.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _truncate_csv(path: Path, last_step: int) -> list[str] | None:
    """Keep the header and the complete rows up to ``last_step``; return the header (None when
    the file holds none)."""
    lines = path.read_text().splitlines(keepends=True)
    total = len(lines)
    if lines and not lines[-1].endswith("\n"):  # a row cut off by the interruption
        lines.pop()
    if not lines:
        return None
    kept = [lines[0]]
    for line in lines[1:]:
        try:
            step = int(next(csv.reader([line]))[0])
        except (ValueError, IndexError, StopIteration):
            break
        if step > last_step:
            break
        kept.append(line)
    if len(kept) < total:
        write_text(path, "".join(kept))
    if len(kept) - 1 != last_step:
        log.warning("%s holds %d rows, the checkpoint is at step %d", path, len(kept) - 1, last_step)
    return next(csv.reader([lines[0]]))


class TensorBoardLogger(_Closing):
    """Scalars under ``<run_dir>/tensorboard/`` (``tensorboard --logdir RUN/tensorboard``).

    Every numeric column but ``step`` becomes a scalar of that tag at ``global_step=step``
    (``density/<layer>`` tags group per layer). Needs the ``tensorboard`` package.

    Args:
        run_dir: the run directory.
        resume_step: for a run resumed after this step: events past it are purged.
        flush_seconds: SummaryWriter's ``flush_secs``.
    """

    def __init__(self, run_dir: str | Path, *, resume_step: int | None = None, flush_seconds: float = 10.0):
        writer_class = _summary_writer()
        self.path = Path(run_dir) / LOGGERS["tensorboard"]
        purge = resume_step + 1 if resume_step is not None else None
        self._writer = writer_class(log_dir=str(self.path), purge_step=purge, flush_secs=flush_seconds)

    def log_step(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        for tag, value in record.items():
            if tag != "step" and isinstance(value, int | float):
                self._writer.add_scalar(tag, value, global_step=step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SparsenetsError(
            "logger 'tensorboard' needs the tensorboard package: pip install 'sparsenets[tensorboard]'"
        ) from None
    return SummaryWriter


def logger_names(names: str | Iterable[str] | None) -> list[str]:
    """Validate logger names: a list, or a comma-separated string (``"csv,tensorboard"``; also
    inside list items); None is no logger. Duplicates are dropped, order kept. An unknown name
    raises a one-line :class:`SparsenetsError` listing the valid ones."""
    if names is None:
        return []
    items = [names] if isinstance(names, str) else list(names)
    result: list[str] = []
    for item in items:
        for name in item.split(",") if isinstance(item, str) else [item]:
            name = name.strip() if isinstance(name, str) else name
            if name == "":
                continue
            if name not in LOGGERS:
                raise choice_error("logger", name, LOGGERS)
            if name not in result:
                result.append(name)
    return result


def check_loggers(names: str | Iterable[str] | None) -> list[str]:
    """:func:`logger_names`, and check that the packages of those loggers are installed."""
    result = logger_names(names)
    if "tensorboard" in result:
        _summary_writer()
    return result


def make_loggers(names: Iterable[str], run_dir: str | Path, *, resume_step: int | None = None) -> list[StepLogger]:
    """The loggers ``names`` (``csv``, ``tensorboard``) writing into ``run_dir``.

    Args:
        resume_step: the checkpoint's global step when resuming a run (its files continue).
    """
    classes = {"csv": CSVLogger, "tensorboard": TensorBoardLogger}
    return [classes[name](run_dir, resume_step=resume_step) for name in check_loggers(names)]


class StepRecorder(_Closing):
    """Builds the per-step record of a training loop and hands it to ``loggers``.

    The mask-derived columns (``density``, ``density/<layer>``, ``itop_rate``) only change at a
    topology update, so they are counted at the first step and whenever ``sparsifier.history``
    grows, not every step.

    Args:
        loggers: where the records go.
        sparsifier: the run's :class:`~sparsenets.dst.DynamicSparsity`, None for dense training.
    """

    def __init__(self, loggers: Sequence[StepLogger], sparsifier: DynamicSparsity | None = None):
        self.loggers = list(loggers)
        self.sparsifier = sparsifier
        self._updates_seen: int | None = None  # len(sparsifier.history) when last counted
        self._density = self._itop_rate = 0.0
        self._layer_density: dict[str, float] = {}

    def record(self, *, step: int, epoch: int, loss: float, lr: float) -> None:
        """Log one optimizer step (call it after the step; ``lr`` the rate the step used)."""
        if not self.loggers:
            return
        record: dict[str, Any] = {"step": step, "epoch": epoch, "loss": loss, "lr": lr}
        if self.sparsifier is not None:
            record.update(self._sparsity_columns(self.sparsifier))
        for logger in self.loggers:
            logger.log_step(record)

    def _sparsity_columns(self, sp: DynamicSparsity) -> dict[str, Any]:
        history = sp.history
        if self._updates_seen != len(history):
            self._updates_seen = len(history)
            masks = sp.masks
            nnz = {name: masks.nnz(name) for name in masks}
            self._density = sum(nnz.values()) / masks.numel()
            self._itop_rate = masks.itop_rate()
            self._layer_density = {f"density/{name}": count / masks.numel(name) for name, count in nnz.items()}
        updated = bool(history) and history[-1]["step"] == sp.step_count
        return {
            "density": self._density,
            "itop_rate": self._itop_rate,
            "churn": history[-1]["churn"] if updated else None,
            "topology_seconds": sp.update_seconds,
            **self._layer_density,
        }

    def flush(self) -> None:
        for logger in self.loggers:
            logger.flush()

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
