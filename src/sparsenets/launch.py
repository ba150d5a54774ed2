"""``sparsenets train --nproc N``: the same command on N processes of this machine, through
torchrun (``torch.distributed.run --standalone``).

The ranks print their own messages (rank 0 the progress and summary; every rank a one-line
error when it fails). The launcher passes them through and keeps torchrun's own banner and
failure report off the screen: a failed run ends with the ranks' one-line errors, once each; a
run that torchrun restarted (``--max-restarts``) and that then finished says what it recovered
from.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence

#: torchrun's own lines: its banner, and glog-style log lines (``E1202 02:24:00.2 …``).
_LAUNCHER_LINE = re.compile(r"^(\*{5,}|Setting OMP_NUM_THREADS|[EWI]\d{4} \d\d:\d\d:\d\d)")
#: the first line of torchrun's own failure report (rank tracebacks carry a ``[rankN]:`` prefix);
#: nothing after it comes from the ranks.
_FAILURE_START = re.compile(r"^Traceback \(most recent call last\):$")


def launched_by_torchrun() -> bool:
    """Whether the environment describes a rank of a multi-process launch (``WORLD_SIZE > 1``)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def restarted_by_torchrun() -> bool:
    """Whether torchrun has restarted the ranks (``--max-restarts``) after one of them failed."""
    try:
        return launched_by_torchrun() and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False


def without_option(argv: Sequence[str], option: str, takes_value: bool = True) -> list[str]:
    """``argv`` with every ``option VALUE`` / ``option=VALUE`` (or bare flag) removed."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == option:
            skip = takes_value
            continue
        if takes_value and arg.startswith(option + "="):
            continue
        out.append(arg)
    return out


def torchrun_command(train_argv: Sequence[str], nproc: int, max_restarts: int = 0) -> list[str]:
    """The torchrun command line that runs ``sparsenets <train_argv>`` on ``nproc`` local ranks."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}", "-m", "sparsenets.cli", *train_argv,
    ]


def run_ranks(train_argv: Sequence[str], nproc: int, max_restarts: int = 0, *, debug: bool = False) -> int:
    """Run the ranks and wait; returns 0 when every rank finished, else 2 (after the ranks'
    error lines, or one line saying how the launch failed)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    command = torchrun_command(train_argv, nproc, max_restarts)
    errors: list[str] = []
    in_report = False
    with subprocess.Popen(command, stdout=None, stderr=subprocess.PIPE, text=True, env=env, bufsize=1) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if debug:
                sys.stderr.write(line)
                continue
            if _FAILURE_START.match(line):
                in_report = True
            if in_report or _LAUNCHER_LINE.match(line):
                continue
            if line.startswith("sparsenets: error:"):
                if line not in errors:  # every rank fails alike: say it once (at the end)
                    errors.append(line)
                continue
            sys.stderr.write(line)
        code = proc.wait()
    if code == 0:
        for line in errors:  # failures torchrun recovered from by restarting the ranks
            sys.stderr.write(line.replace("sparsenets: error:", "sparsenets: warning: recovered by a restart:", 1))
        return 0
    sys.stderr.writelines(errors)
    if not errors:
        sys.stderr.write(
            f"sparsenets: error: the {nproc}-process run failed (torchrun exit code {code}); "
            f"rerun with --debug to see the launcher's report\n"
        )
    return 2
