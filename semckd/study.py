"""Cells of a sweep or benchmark table as trials of one Optuna study, shared by any number of workers.

Why not ``study.optimize`` with a ``GridSampler``: in distributed mode the grid sampler can hand two
workers the same point, and a retried trial would start a fresh run instead of resuming the killed one.
Here a *cell* (a grid point and seed, or a protocol cell) is a stable key, and a worker trains a cell only
while it holds the cell's one live trial:

* claim: create a RUNNING trial tagged with the key, then read the study again; if any *other* live trial
  (RUNNING with a fresh heartbeat, or finished) holds the key, give ours up (FAIL, ``duplicate``) and try
  later. Both storages are linearizable (the journal file under its lock, PostgreSQL by commit order), so
  of two racing claims at least one sees the other: two workers never both train a cell (both may back
  off, then a random pause breaks the tie).
* heartbeat: a thread stamps the held trial every ``heartbeat_s``; a RUNNING trial whose stamp is older
  than ``grace_s`` belongs to a dead worker, is failed by whoever notices, and its cell is claimed again,
  resuming from the run folder's ``last.pt`` (never trained twice). A worker that finds its own trial
  failed (it was stalled that long) stops at the next epoch instead of racing the new owner.

The study's ``spec`` user attribute records what it was created for (method, grid, budget, ...); a
worker started with different settings refuses before writing anything.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = ["CellStudy", "CellLost", "open_storage"]

KEY = "cell"  # the user attribute naming a trial's cell
HEARTBEAT = "heartbeat"


class CellLost(RuntimeError):
    """Raised (from the per-epoch callback) when another worker has taken this worker's cell over."""


def _quiet_optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_storage(url: str | None, default_journal: Path) -> Any:
    """The Optuna storage for ``--storage URL`` (default: a journal file ``default_journal``).

    ``postgresql://``, ``mysql://`` and ``sqlite:///`` URLs are databases; a path (or ``journal:PATH``)
    is a journal file, which several processes (or machines sharing the file system) may use at once.
    Every failure is one :class:`UserError` line naming the fix, raised before anything is written.
    """
    optuna = _quiet_optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    def journal(path: Path) -> Any:
        if path.is_dir():
            raise UserError(f"--storage {path} is a folder; name a journal file inside it "
                            f"(e.g. {path / 'study.journal'})")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise UserError(f"cannot open the study journal {path} ({e.strerror or e}); pass --storage "
                            "a writable file or a postgresql:// URL") from None

    if url is None:
        return journal(default_journal)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme.split("+")[0] in ("postgresql", "postgres", "mysql", "sqlite"):
        if scheme in ("postgres", "postgresql"):  # SQLAlchemy's default driver is psycopg (3)
            import importlib.util

            driver = next((d for d in ("psycopg", "psycopg2") if importlib.util.find_spec(d)), None)
            if driver is None:
                raise UserError("--storage postgresql:// needs a PostgreSQL driver; pip install "
                                "'psycopg[binary]' (or semckd[postgres])")
            url = f"postgresql+{driver}" + url[len(scheme):]
        kwargs = {"connect_args": {"connect_timeout": 10}} if scheme.startswith("postgres") else {}
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True, **kwargs},
                                              skip_table_creation=False)
        except Exception as e:  # noqa: BLE001 - sqlalchemy's many errors: one line for the user
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot use storage {_redact(url)}: {first[:200]}; check the URL "
                            "(postgresql://USER:PASSWORD@HOST:PORT/DATABASE) and that the server is up, or "
                            "drop --storage for a journal file in --out") from None
    if scheme in ("", "journal", "file"):
        path = url.split("://", 1)[1] if "://" in url else url
        path = path[len("journal:"):] if path.startswith("journal:") else path
        if not path:
            raise UserError("--storage: empty journal path; pass a file, e.g. --storage shared/study.journal")
        return journal(Path(path))
    raise UserError(f"--storage {url!r}: unknown kind {scheme!r}; pass a journal file path or a "
                    "postgresql://USER:PASSWORD@HOST:PORT/DATABASE URL")


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: let the heartbeat decide
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _redact(url: str) -> str:
    """The URL without its password (it goes into an error message)."""
    if "@" in url and "://" in url:
        head, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{head}://{cred.split(':', 1)[0]}:***@{host}" if ":" in cred else url
    return url


class CellStudy:
    """One Optuna study whose trials are the cells of a sweep or table (see the module docstring)."""

    def __init__(self, storage: Any, name: str, spec: dict[str, Any], *, pruner: Any = None,
                 sampler: Any = None, heartbeat_s: float = 10.0, grace_s: float = 60.0,
                 log: Callable[[str], None] = print, where: str = "") -> None:
        optuna = _quiet_optuna()
        self.optuna = optuna
        self.heartbeat_s, self.grace_s, self.log = heartbeat_s, grace_s, log
        spec_text = json.dumps(spec, sort_keys=True, default=str)
        try:
            try:  # load first: opening an existing study (with other settings, say) writes nothing
                self.study = optuna.load_study(storage=storage, study_name=name, pruner=pruner,
                                               sampler=sampler)
            except KeyError:
                self.study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                                 pruner=pruner, sampler=sampler, load_if_exists=True)
        except Exception as e:  # noqa: BLE001 - a storage that fails only on first use
            raise UserError(f"cannot open study {name!r} in {where or 'the storage'}: "
                            f"{str(e).splitlines()[0][:200]}; check --storage") from None
        have = self.study.user_attrs.get("spec")
        if have is None:
            self.study.set_user_attr("spec", spec_text)
        elif have != spec_text:
            old, new = json.loads(have), json.loads(spec_text)
            diff = ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} here"
                             for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
            raise UserError(f"study {name!r} in {where or 'the storage'} was created for other settings "
                            f"({diff}); rerun with the same settings, or start a new study with "
                            "--study-name NAME (or another --out)")
        self.storage = self.study._storage
        self.study_id = self.study._study_id

    # ------------------------------------------------------------------ reading
    def trials(self) -> list[Any]:
        return self.study.get_trials(deepcopy=False)

    def _stale(self, t: Any, now: float) -> bool:
        if t.user_attrs.get("host") == os.uname().nodename and not _alive(t.user_attrs.get("pid")):
            return True  # its worker, on this machine, is gone: no need to wait out the grace period
        beat = t.user_attrs.get(HEARTBEAT)
        if beat is None:
            beat = t.datetime_start.timestamp() if t.datetime_start else now
        return now - float(beat) > self.grace_s

    def state_of(self, key: str) -> tuple[str, Any]:
        """``("done", trial)`` (COMPLETE or PRUNED), ``("busy", trial)`` (held by a live worker) or
        ``("free", None)``; stale RUNNING trials of ``key`` are failed on the way."""
        TS = self.optuna.trial.TrialState
        now = time.time()
        busy = None
        for t in self.trials():
            if t.user_attrs.get(KEY) != key or t.user_attrs.get("duplicate"):
                continue
            if t.state in (TS.COMPLETE, TS.PRUNED):
                return "done", t
            if t.state == TS.RUNNING:
                if self._stale(t, now):
                    self._fail(t._trial_id, "stale")
                    self.log(f"{key}: trial {t.number}'s worker stopped answering; its cell is retried")
                else:
                    busy = t
        return ("busy", busy) if busy is not None else ("free", None)

    def done_trials(self) -> dict[str, Any]:
        """key → its finished trial (COMPLETE or PRUNED)."""
        TS = self.optuna.trial.TrialState
        out: dict[str, Any] = {}
        for t in self.trials():
            key = t.user_attrs.get(KEY)
            if key and t.state in (TS.COMPLETE, TS.PRUNED) and not t.user_attrs.get("duplicate"):
                out.setdefault(key, t)
        return out

    def _fail(self, trial_id: int, why: str) -> None:
        try:
            self.storage.set_trial_user_attr(trial_id, "failed_because", why)
            self.storage.set_trial_state_values(trial_id, self.optuna.trial.TrialState.FAIL)
        except self.optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed (or finished) it first

    # ------------------------------------------------------------------ claiming
    def claim(self, key: str, attrs: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
              distributions: dict[str, Any] | None = None) -> Held | None:
        """Hold ``key``'s one live trial, or None when the cell is done or another worker holds it."""
        st, _ = self.state_of(key)
        if st != "free":
            return None
        ft = self.optuna.trial.create_trial(
            state=self.optuna.trial.TrialState.RUNNING, params=params or {},
            distributions=distributions or {}, user_attrs={KEY: key, HEARTBEAT: time.time(),
                                                           "host": os.uname().nodename, "pid": os.getpid(),
                                                           **(attrs or {})})
        trial_id = self.storage.create_new_trial(self.study_id, template_trial=ft)
        TS = self.optuna.trial.TrialState
        now = time.time()
        for t in self.trials():
            if (t._trial_id != trial_id and t.user_attrs.get(KEY) == key and not t.user_attrs.get("duplicate")
                    and (t.state in (TS.COMPLETE, TS.PRUNED)
                         or (t.state == TS.RUNNING and not self._stale(t, now)))):
                self.storage.set_trial_user_attr(trial_id, "duplicate", True)
                self._fail(trial_id, "duplicate claim")
                time.sleep(random.uniform(0.0, 0.5))  # two racing claims that both backed off: desync
                return None
        return Held(self, trial_id, key)

    def ask(self, attrs: dict[str, Any]) -> Held:
        """A new trial from the study's sampler (continuous search); its key is set by the caller."""
        trial = self.study.ask()
        for k, v in {HEARTBEAT: time.time(), "host": os.uname().nodename, "pid": os.getpid(),
                     **attrs}.items():
            trial.set_user_attr(k, v)
        return Held(self, trial._trial_id, attrs.get(KEY, ""), trial)

    def wait_note(self, what: str, poll_s: float) -> None:
        self.log(f"waiting for {what} held by other workers (polling every {poll_s:g} s)")
        time.sleep(poll_s)


class Held:
    """A claimed trial: its heartbeat runs until :meth:`finish` / :meth:`release`."""

    def __init__(self, cs: CellStudy, trial_id: int, key: str, trial: Any = None) -> None:
        self.cs, self.trial_id, self.key = cs, trial_id, key
        self.trial = trial or cs.optuna.Trial(cs.study, trial_id)
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    @property
    def number(self) -> int:
        return self.trial.number

    def _beat(self) -> None:
        TS = self.cs.optuna.trial.TrialState
        while not self._stop.wait(self.cs.heartbeat_s):
            try:
                if self.cs.storage.get_trial(self.trial_id).state != TS.RUNNING:
                    self.lost = True
                    return
                self.cs.storage.set_trial_user_attr(self.trial_id, HEARTBEAT, time.time())
            except self.cs.optuna.exceptions.UpdateFinishedTrialError:
                self.lost = True
                return
            except Exception:  # noqa: BLE001 - a storage hiccup: try again at the next beat
                continue

    def report(self, epoch: int, value: float | None) -> bool:
        """Record the epoch's validation accuracy; True when the pruner says stop. Raises
        :class:`CellLost` when another worker has taken the cell over meanwhile."""
        if self.lost:
            raise CellLost(f"{self.key}: another worker took this cell over (this one stalled for more "
                           f"than {self.cs.grace_s:g} s)")
        if value is None:
            return False
        self.trial.report(float(value), int(epoch))
        return self.trial.should_prune()

    def set(self, key: str, value: Any) -> None:
        self.cs.storage.set_trial_user_attr(self.trial_id, key, value)

    def _end(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def finish(self, value: float | None, *, pruned: bool = False,
               record: dict[str, Any] | None = None) -> None:
        """COMPLETE with ``value`` (PRUNED when ``pruned``; FAIL when value is None), ``record`` kept."""
        self._end()
        TS = self.cs.optuna.trial.TrialState
        if record is not None:
            self.set("record", json.loads(json.dumps(record, default=str)))
        state = TS.PRUNED if pruned else (TS.COMPLETE if value is not None else TS.FAIL)
        try:
            self.cs.storage.set_trial_state_values(self.trial_id, state,
                                                   [float(value)] if state == TS.COMPLETE else None)
        except self.cs.optuna.exceptions.UpdateFinishedTrialError:
            self.cs.log(f"{self.key}: trial {self.number} was taken over while it ran; its result is kept "
                        "in the run folder only")

    def release(self, why: str) -> None:
        """Give the cell back (FAIL) so another worker, or a rerun, picks it up."""
        self._end()
        self.cs._fail(self.trial_id, why)
