"""Run store: one directory per run holding its config, step-indexed tables, checkpoints and attribution snapshots.

Layout of a run directory::

    config.json                      the run's configuration (written once)
    tables/<name>/part-<first>-<last>.parquet   step-indexed rows (metrics, tracked summaries, ...)
    checkpoints/step-<step>.pt       model/optimiser/RNG state; the newest two are kept
    LOCK                             the pid and host of the process training into the directory, while it runs
    snapshots/                       room for full attribution maps
    COMPLETE                         written when the run has finished

Every file is written to a temporary name in the same directory and then renamed, so a reader (or a resumed run)
never sees half a file. Table parts are written only right before a checkpoint; on resume, parts of steps after the
checkpoint resumed from are dropped, so no step row is lost or duplicated. The previous checkpoint is deleted only
after the next one is complete, so a corrupt newest checkpoint falls back to the one before it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

CONFIG_FILE = "config.json"
COMPLETE_FILE = "COMPLETE"
LOCK_FILE = "LOCK"
_PART = re.compile(r"^part-(\d{8})-(\d{8})\.parquet$")
_CHECKPOINT = re.compile(r"^step-(\d{8})\.pt$")


class RunStoreError(RuntimeError):
    """A run directory is missing, incomplete, corrupt, or belongs to a different configuration."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a small result table as CSV (6 significant digits), atomically, creating its folder."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.6g")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), buffer.getvalue())


def point_tables(output: str | Path, filename: str, read: Callable[[Path], pd.DataFrame]) -> pd.DataFrame:
    """The tables ``filename`` of every point folder of a sweep's ``output`` (``*/filename``), read and joined."""
    files = sorted(Path(output).glob(f"*/{filename}"))
    if not files:
        raise FileNotFoundError(f"no point of {output} has a {filename}; has the sweep run?")
    return pd.concat([read(path) for path in files], ignore_index=True)


def collect_command(
    argv: Sequence[str] | None,
    description: str,
    example: str,
    collect: Callable[[str], pd.DataFrame],
    write: Callable[[pd.DataFrame, str], None],
    unit: str,
) -> int:
    """The command line ``OUTPUT TABLE`` of a sweep collector: ``collect(OUTPUT)``, then ``write(frame, TABLE)``.

    Parameters
    ----------
    argv : sequence of str or None
        The arguments (``None``: the process's).
    description, example : str
        The command's description and an example TABLE path, for its help.
    collect, write : callable
        The study's collector and its table writer.
    unit : str
        The column whose distinct values the closing message counts (e.g. ``"seed"``).

    Returns
    -------
    int
        0, or 2 when no point has a table (the error printed).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("output", help="the sweep's output folder (its YAML's 'output')")
    parser.add_argument("table", help=f"the CSV to write, e.g. {example}")
    args = parser.parse_args(argv)
    try:
        frame = collect(args.output)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write(frame, args.table)
    print(f"wrote {len(frame)} rows of {frame[unit].nunique()} {unit}s to {args.table}")
    return 0


class RunStore:
    """Reads and writes one run directory (see the module docstring for its layout)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ----------------------------------------------------------------- config
    @classmethod
    def create(cls, root: str | Path, config: dict[str, Any], ignore: tuple[str, ...] = ()) -> RunStore:
        """Open ``root`` for ``config``: a new or empty directory is initialised; an existing run must match.

        Keys in ``ignore`` (settings that do not change the results, such as where the data lie or the device) are
        not part of the run's identity: they may differ from those stored. A directory that holds a config but no
        step yet (a run that failed before its first checkpoint) is taken over by the new config.
        """
        store = cls(root)
        config = json.loads(json.dumps(config))  # normalise tuples etc. to what JSON gives back
        store._check_lock()  # never rewrite a directory another live process trains into
        if store.root.exists() and not store.root.is_dir():
            raise RunStoreError(f"run directory {store.root} is a file, not a directory")
        if store.root.exists() and any(
            p.name != LOCK_FILE and not p.name.startswith(".") for p in store.root.iterdir()
        ):
            existing = store.config()
            identity = {k: v for k, v in config.items() if k not in ignore}
            stored = {k: v for k, v in existing.items() if k not in ignore}
            if stored != identity:
                if not store.has_steps():
                    atomic_write_text(store.root / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
                else:
                    changed = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
                    details = ", ".join(f"{k}: {stored.get(k)!r} there, {identity.get(k)!r} now" for k in changed)
                    raise RunStoreError(
                        f"run directory {store.root} holds a run with a different configuration ({details}); "
                        "use another run directory, or delete this one to start over"
                    )
        else:
            atomic_write_text(store.root / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
        store._remove_temporaries()
        return store

    def has_steps(self) -> bool:
        """Whether the run has stored anything beyond its config (a table part or a checkpoint)."""
        return bool(self._checkpoints()) or any(self._parts(name) for name in self.tables())

    def remove_if_stub(self) -> bool:
        """Delete the directory when it holds nothing but a config (a run that failed before its first step)."""
        if not self.root.is_dir() or self.has_steps():
            return False
        leftovers = {p.name for p in self.root.iterdir()} - {
            CONFIG_FILE,
            LOCK_FILE,
            "tables",
            "checkpoints",
            "snapshots",
        }
        if any(not p.name.startswith(".") for p in self.root.iterdir() if p.name in leftovers):
            return False  # something else lives there: leave it alone
        shutil.rmtree(self.root)
        return True

    def config(self) -> dict[str, Any]:
        path = self.root / CONFIG_FILE
        if not self.root.is_dir():
            raise RunStoreError(f"{self.root} is not a run directory: it does not exist")
        if not path.is_file():
            raise RunStoreError(f"{self.root} is not a run directory: it has no {CONFIG_FILE}")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RunStoreError(f"{path} is corrupt (not valid JSON: {err})") from err
        if not isinstance(config, dict):
            raise RunStoreError(f"{path} is corrupt: it holds a {type(config).__name__}, not a JSON object")
        return config

    @property
    def complete(self) -> bool:
        return (self.root / COMPLETE_FILE).is_file()

    def mark_complete(self, steps: int) -> None:
        atomic_write_text(self.root / COMPLETE_FILE, json.dumps({"steps": steps}) + "\n")

    # ----------------------------------------------------------------- tables
    def _table_dir(self, name: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"table names are letters, digits and underscores; got {name!r}")
        return self.root / "tables" / name

    def _parts(self, name: str) -> list[tuple[int, int, Path]]:
        folder = self._table_dir(name)
        if not folder.is_dir():
            return []
        parts = []
        for path in folder.iterdir():
            match = _PART.match(path.name)
            if match:
                parts.append((int(match[1]), int(match[2]), path))
        return sorted(parts)

    def tables(self) -> list[str]:
        folder = self.root / "tables"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def append_table(self, name: str, frame: pd.DataFrame) -> None:
        """Store the rows of ``frame`` (which has an integer ``step`` column) as one new part of table ``name``."""
        if frame.empty:
            return
        if "step" not in frame.columns:
            raise ValueError(f"table {name!r} rows need a 'step' column; got columns {list(frame.columns)}")
        first, last = int(frame["step"].min()), int(frame["step"].max())
        buffer = io.BytesIO()
        frame.reset_index(drop=True).to_parquet(buffer, index=False)
        atomic_write_bytes(self._table_dir(name) / f"part-{first:08d}-{last:08d}.parquet", buffer.getvalue())

    def read_table(self, name: str) -> pd.DataFrame:
        """All rows of table ``name`` in step order."""
        parts = self._parts(name)
        if not parts:
            raise RunStoreError(f"run {self.root} has no table {name!r}; tables present: {self.tables() or 'none'}")
        frames = []
        for _, _, path in parts:
            try:
                frames.append(pd.read_parquet(path))
            except Exception as err:  # pyarrow raises several types for damaged files
                raise RunStoreError(f"table part {path} is corrupt ({type(err).__name__}: {err})") from err
        frame = pd.concat(frames, ignore_index=True)
        if frame["step"].duplicated().any() and name == "metrics":
            raise RunStoreError(f"table {name!r} of {self.root} has duplicated steps: the run directory is corrupt")
        return frame.sort_values("step", kind="stable").reset_index(drop=True)

    def truncate_tables(self, last_step: int) -> None:
        """Drop every row after ``last_step`` from every table (used when resuming from that step's checkpoint)."""
        for name in self.tables():
            for first, last, path in self._parts(name):
                if first > last_step:
                    path.unlink()
                elif last > last_step:
                    frame = pd.read_parquet(path)
                    path.unlink()
                    self.append_table(name, frame[frame["step"] <= last_step])

    # ------------------------------------------------------------ checkpoints
    def _checkpoints(self) -> list[tuple[int, Path]]:
        folder = self.root / "checkpoints"
        if not folder.is_dir():
            return []
        found = [(int(m[1]), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))]
        return sorted(found)

    def save_checkpoint(self, step: int, state: dict[str, Any], keep: int = 1) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.root / "checkpoints" / f"step-{step:08d}.pt", buffer.getvalue())
        for _, old in self._checkpoints()[:-keep]:
            old.unlink(missing_ok=True)

    def checkpoint_steps(self) -> list[int]:
        return [step for step, _ in self._checkpoints()]

    def load_checkpoint(self, step: int | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Load the checkpoint of ``step`` (default: the newest) with ``weights_only=True``."""
        checkpoints = dict(self._checkpoints())
        if not checkpoints:
            raise RunStoreError(f"run {self.root} has no checkpoint yet")
        if step is None:
            step = max(checkpoints)
        if step not in checkpoints:
            raise RunStoreError(f"run {self.root} has no checkpoint of step {step}; it has steps {sorted(checkpoints)}")
        try:
            return torch.load(checkpoints[step], map_location=map_location, weights_only=True)
        except Exception as err:  # a truncated or foreign file: pickle, zip and runtime errors alike
            reason = " ".join(str(err).split())[:160]  # torch's unpickling errors run over many lines
            raise RunStoreError(f"checkpoint {checkpoints[step]} is corrupt ({type(err).__name__}: {reason})") from err

    def load_newest_readable_checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """The newest checkpoint that loads; a corrupt newer one is renamed ``*.corrupt`` and the fallback announced."""
        steps = self.checkpoint_steps()
        for position, step in enumerate(reversed(steps)):
            try:
                return self.load_checkpoint(step, map_location=map_location)
            except RunStoreError as err:
                older = steps[: len(steps) - position - 1]
                if not older:
                    raise RunStoreError(
                        f"{err}; no earlier checkpoint to fall back to: delete {self.root} to start over"
                    ) from err
                path = self.root / "checkpoints" / f"step-{step:08d}.pt"
                os.replace(path, path.with_name(path.name + ".corrupt"))
                print(
                    f"checkpoint of step {step} in {self.root} is unreadable ({err}); falling back to the previous "
                    f"one, of step {older[-1]} (the damaged file is kept as {path.name}.corrupt)",
                    flush=True,
                )
        raise RunStoreError(f"run {self.root} has no checkpoint yet")

    # ------------------------------------------------------------------ lock
    def _lock_owner(self) -> tuple[int, str] | None:
        """(pid, host) written in the lock file, or None without a (readable) lock."""
        try:
            owner = json.loads((self.root / LOCK_FILE).read_text(encoding="utf-8"))
            return int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _check_lock(self) -> None:
        """Raise a :class:`RunStoreError` when another live process holds the lock of this directory."""
        owner = self._lock_owner()
        if owner is not None and _alive(*owner) and owner[0] != os.getpid():
            pid, host = owner
            raise RunStoreError(
                f"run directory {self.root} is in use by process {pid} on {host} (lock file {self.root / LOCK_FILE}); "
                "wait for it to finish or stop it; two trainers never share a run directory"
            )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory's lock file (pid and host) while the block runs; a stale lock of a dead process is taken over."""
        path = self.root / LOCK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        for _ in range(2):
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._lock_owner()
                if owner is not None and (_alive(*owner) or owner[0] == os.getpid()):
                    pid, host = owner
                    raise RunStoreError(
                        f"run directory {self.root} is in use by process {pid} on {host} (lock file {path}); wait for "
                        "it to finish or stop it; two trainers never share a run directory"
                    ) from None
                described = f"process {owner[0]} on {owner[1]}, no longer running" if owner else "unreadable"
                print(f"taking over the stale lock of {self.root} ({described})", flush=True)
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(record)
            break
        else:
            raise RunStoreError(f"could not take the lock file {path}: another process keeps creating it")
        try:
            yield
        finally:
            if self._lock_owner() == (os.getpid(), socket.gethostname()):
                path.unlink(missing_ok=True)

    @property
    def snapshot_dir(self) -> Path:
        return self.root / "snapshots"

    def _remove_temporaries(self) -> None:
        """Delete temporary files of dead processes (a live trainer's half-written file is left alone)."""
        host = socket.gethostname()
        for path in self.root.rglob(".*.tmp-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid), host):
                continue
            path.unlink(missing_ok=True)


def _alive(pid: int, host: str) -> bool:
    """Whether process ``pid`` runs (on another host we cannot tell, so it counts as running)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True
