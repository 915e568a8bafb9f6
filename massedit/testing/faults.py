"""Fault injection for tests: commands killed with SIGKILL at named moments, cheaply.

- :class:`CommandServer` runs ``massedit`` commands as child processes forked from one server
  that imported torch, transformers and massedit once. A command is a real process: it can be
  killed with SIGKILL (by the ``$MASSEDIT_FAULT_AT`` hook of :func:`massedit.atomic.fault_point`
  or by the server's timer), its files are its own, and the kernel frees its locks. Forking
  spares the 2-4 s import of a fresh interpreter per command, which a suite of twenty kills
  could not afford.
- :func:`folder_problems` checks that no file in a folder is half-written: every JSON file
  parses, every safetensors file opens and reads, patch and model folders are complete.
- :func:`fault_facts` gives facts whose words the tiny models' tokenizer knows.

Run ``python -m massedit.testing.faults`` to start a server by hand (the protocol is one JSON
line per command on stdin, one JSON line per result on stdout).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path
from typing import Any

from massedit.atomic import FAULT_ENV, is_temporary

# Facts over the tiny vocabulary (massedit.testing.TINY_WORDS). Each (template, subject) pair
# is distinct and a subject that appears twice has other words before it the second time, so
# no two facts share a key (the text up to the subject's last token).
_LANDMARKS = ["Eiffel Tower", "Colosseum", "Louvre", "Big Ben", "Space Needle",
              "Golden Gate Bridge", "Statue of Liberty"]
_PEOPLE = ["Michael Jordan", "Lionel Messi", "Barack Obama", "Marie Curie", "Albert Einstein",
           "Danielle Darrieux"]
_COMPANIES = ["Apple", "Microsoft", "Google", "Toyota", "Nokia", "Sony"]
_COUNTRIES = ["France", "Italy", "England", "Germany", "Spain", "Japan", "Russia", "China"]
_CITIES = ["Paris", "Rome", "London", "Berlin", "Madrid", "Tokyo", "Moscow", "Beijing", "Cairo",
           "Athens", "Vienna", "Dublin", "Lisbon", "Oslo"]
_LANGUAGES = ["French", "Italian", "English", "German", "Spanish", "Japanese", "Russian",
              "Chinese", "Arabic", "Greek", "Portuguese"]
_SPORTS = ["basketball", "football", "soccer", "baseball", "tennis", "hockey", "chess"]
_FACT_KINDS = [  # (template, subjects, answers)
    ("The {} is located in", _LANDMARKS, _CITIES),
    ("{} plays", _PEOPLE, _SPORTS),
    ("The mother tongue of {} is", _PEOPLE, _LANGUAGES),
    ("The headquarters of {} is in", _COMPANIES, _CITIES),
    ("The capital city of {} is", _COUNTRIES, _CITIES),
    ("The official language of {} is", _COUNTRIES, _LANGUAGES),
]
FACT_COLUMNS = ["prompt", "subject", "target_new", "target_true"]


def fault_facts(n: int = 40) -> list[dict[str, str]]:
    """``n`` (at most 40) distinct facts for ``massedit edit`` on a tiny model: rows with
    prompt, subject, target_new and target_true, the new target never the true one."""
    rows = []
    for template, subjects, answers in _FACT_KINDS:
        picks = cycle(answers)
        for i, subject in enumerate(subjects):
            true = answers[(3 * i) % len(answers)]
            new = next(a for a in picks if a != true)
            rows.append({"prompt": template, "subject": subject, "target_new": new,
                         "target_true": true})
    if n > len(rows):
        raise ValueError(f"fault_facts: at most {len(rows)} facts, {n} asked")
    return rows[:n]


# ---- half-written files -------------------------------------------------------------------------
# What a complete folder of each kind holds (a kill while one is written must never leave a
# visible folder with less).
PATCH_FILES = ("patch.json", "deltas.safetensors")
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "README.md")


@dataclass
class FolderReport:
    """What :func:`folder_problems` found: ``broken`` visible files or folders (must be none,
    ever) and hidden ``temporaries`` (a killed writer's leftovers, never read as results)."""

    broken: list[str]
    temporaries: list[str]
    files_checked: int


def folder_problems(folder: str | os.PathLike) -> FolderReport:
    """Open every visible file under ``folder`` as its kind says: JSON parses, safetensors
    opens and every tensor reads; patch folders (``patch``, ``batch-*``) and ``model`` folders
    hold all their files. Hidden temporaries are listed apart, and not opened."""
    from safetensors import safe_open

    broken, temporaries, checked = [], [], 0
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        for name in [*dirs, *files]:
            if is_temporary(name):
                temporaries.append(str(here / name))
        dirs[:] = [d for d in dirs if not is_temporary(d)]
        files = [f for f in files if not is_temporary(f) and not f.startswith(".")]
        expected = (PATCH_FILES if here.name == "patch" or here.name.startswith("batch-")
                    else MODEL_FILES if here.name == "model" else ())
        broken += [f"{here / name}: missing" for name in expected if name not in files]
        for name in files:
            path = here / name
            checked += 1
            try:
                if name.endswith(".json"):
                    json.loads(path.read_text(encoding="utf-8"))
                elif name.endswith(".safetensors"):
                    with safe_open(str(path), framework="pt") as fh:
                        for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                            fh.get_tensor(key)
                elif path.stat().st_size == 0 and name.endswith((".csv", ".md", ".txt")):
                    raise ValueError("empty")
            except Exception as err:  # any failure to read is a half-written file
                broken.append(f"{path}: {type(err).__name__}: {err}")
    return FolderReport(broken, temporaries, checked)


# ---- the command server -------------------------------------------------------------------------
@dataclass
class Outcome:
    """How a command ended: its exit status, or the signal that killed it."""

    exit_code: int | None
    signal: int | None
    log: str  # its stdout and stderr together
    seconds: float
    timed_out: bool = False  # killed by the server's time limit, not as asked

    @property
    def killed(self) -> bool:
        """Killed with SIGKILL as asked (by a fault point or ``kill_after``)."""
        return self.signal == signal.SIGKILL and not self.timed_out


class CommandServer:
    """A server process that forks one child per ``massedit`` command (see the module note).

    >>> with CommandServer(env={"MASSEDIT_CACHE": "/tmp/cache"}) as server:  # doctest: +SKIP
    ...     out = server.run(["edit", ...], fault="dir:batch-*:2")
    ...     out.killed
    True
    """

    def __init__(self, env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None,
                 log_dir: str | os.PathLike | None = None, preload: tuple[str, ...] = ()) -> None:
        """``env`` is added to every command's environment (and ``OMP_NUM_THREADS=1``);
        ``preload`` names modules the server imports beforehand (a model's classes)."""
        import tempfile

        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="massedit-faults-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._count = 0
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "massedit.testing.faults", *preload], cwd=cwd, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        ready = self._proc.stdout.readline()
        if ready.strip() != "ready":
            self.close()
            raise RuntimeError(f"the command server did not start: {ready!r}")

    def run(self, argv: list[str | os.PathLike], *, fault: str | None = None,
            kill_after: float | None = None, file_size_limit: int | None = None,
            env: dict[str, str] | None = None, timeout: float = 600) -> Outcome:
        """Run ``massedit <argv>`` in a forked child and wait for it.

        ``fault``: ``$MASSEDIT_FAULT_AT`` for the child (``<point>:<n>``); ``kill_after``:
        SIGKILL after that many seconds if it still runs; ``file_size_limit``: bytes, as
        ``RLIMIT_FSIZE`` with SIGXFSZ ignored, so a larger write fails with EFBIG as on a full
        disk. A command still running after ``timeout`` seconds is killed (``timed_out``)."""
        self._count += 1
        log = self.log_dir / f"command-{self._count:03d}.log"
        child_env = dict(env or {})
        if fault:
            child_env[FAULT_ENV] = fault
        request = {"argv": [str(a) for a in argv], "env": child_env, "log": str(log),
                   "kill_after": kill_after, "file_size_limit": file_size_limit,
                   "timeout": timeout}
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the command server stopped")
        reply = json.loads(line)
        return Outcome(reply["exit_code"], reply["signal"], log.read_text(errors="replace"),
                       reply["seconds"], reply["timed_out"])

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> CommandServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# What the commands import on their way (a fork inherits them: each would take seconds).
SERVER_IMPORTS = ("massedit.cli.main", "massedit.jobs.edit", "massedit.jobs.stats",
                  "massedit.jobs.report", "massedit.jobs.sequential", "massedit.editing.methods",
                  "massedit.evals.scoring", "massedit.export.card", "massedit.data.datasets",
                  "massedit.testing")


def _child(request: dict[str, Any]) -> int:
    """In the forked child: become ``massedit <argv>``; the exit status."""
    import resource

    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.environ.update(request["env"])
    if request["file_size_limit"] is not None:
        # Ignored, SIGXFSZ no longer kills the writer: the write fails with EFBIG instead,
        # the error a full disk gives (ENOSPC) in every respect that matters here.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(request["file_size_limit"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from massedit.cli.main import app

    try:
        app(request["argv"], prog_name="massedit")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # an uncaught error: its traceback, as the interpreter would print
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _wait(pid: int, kill_after: float | None, timeout: float) -> tuple[int, bool]:
    """The child's wait status, killing it with SIGKILL after ``kill_after`` seconds (as
    asked) or ``timeout`` (then the flag is True)."""
    timed_out = kill_after is None or timeout < kill_after
    deadline = time.monotonic() + (timeout if timed_out else kill_after)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, False
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1], timed_out
        time.sleep(0.01)


def serve() -> None:
    """The server: import what every command needs, then fork a child per request line."""
    from massedit.editing.registry import load_plugins

    for module in (*SERVER_IMPORTS, *sys.argv[1:]):  # and a model's classes, if named
        importlib.import_module(module)
    load_plugins()  # every command would
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            finally:
                os._exit(code)
        status, timed_out = _wait(pid, request["kill_after"], request["timeout"])
        reply = {"exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                 "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                 "seconds": round(time.monotonic() - start, 3), "timed_out": timed_out}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    serve()
