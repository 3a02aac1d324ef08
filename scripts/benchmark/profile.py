"""``scripts/bench --profile``: py-spy samples each server process while a scenario runs, so every figure
comes with the evidence of where the CPU went.

For each scenario and process it writes ``bench/profiles/<scenario>.<process>.txt``, the collapsed stacks
py-spy records (the input of flamegraph.pl, and speedscope opens it), and ``<scenario>.<process>.top.txt``,
the functions with the most samples on top of the stack (self) and anywhere in it (total). py-spy attaches
from outside (ptrace) and samples without pausing the process (``--nonblocking``), so the servers run
the code they run without it.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

from .options import REPO

PROFILES = REPO / "bench" / "profiles"
SAMPLES_PER_SECOND = 100
TOP = 40


def py_spy() -> str | None:
    """The py-spy beside this interpreter (the dev extra installs it), else the one on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@contextlib.contextmanager
def profiled(scenario: str, pids: Mapping[str, int | None], enabled: bool) -> Iterator[None]:
    """Sample ``pids`` (process name -> pid) while the block runs; nothing when not ``enabled``."""
    if not enabled:
        yield
        return
    binary = py_spy()
    if binary is None:
        print("  ! --profile: py-spy not found (pip install py-spy)", flush=True)
        yield
        return
    PROFILES.mkdir(parents=True, exist_ok=True)
    recorders: dict[Path, subprocess.Popen[bytes]] = {}
    for process, pid in pids.items():
        if pid is None:
            continue
        out = PROFILES / f"{slug(scenario)}.{process}.txt"
        command = [binary, "record", "--pid", str(pid), "--rate", str(SAMPLES_PER_SECOND)]
        command += ["--format", "raw", "--function", "--nonblocking", "--output", str(out)]
        recorders[out] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        for out, recorder in recorders.items():
            recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                _, err = recorder.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                recorder.kill()
                continue
            if out.exists():
                out.with_suffix(".top.txt").write_text(summarise(out.read_text()))
            else:
                print(f"  ! py-spy wrote no {out.name}: {err.decode(errors='replace').strip()[-200:]}", flush=True)


def summarise(collapsed: str, top: int = TOP) -> str:
    """The functions with the most samples: on top of the stack (where the CPU was) and anywhere in it
    (what it was doing that for), each with its share of all samples."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):  # the first frame is the process/thread
            anywhere[frame] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples at {SAMPLES_PER_SECOND}/s", "", "self:"]
    lines += [f"{100 * n / total:6.1f} %  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "total (anywhere in the stack):"]
    lines += [f"{100 * n / total:6.1f} %  {frame}" for frame, n in anywhere.most_common(top)]
    return "\n".join(lines) + "\n"
