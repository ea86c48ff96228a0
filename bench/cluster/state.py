"""A cluster's record on disk, in its state folder:

- `state.json`: what is up (hosts, addresses, rate, quotas...), rewritten whole and atomically;
- `journal`: one JSON line per object, appended and flushed to disk BEFORE `up` makes the
  object, between a line naming the `up` process and a `done` line. A journal whose last `up`
  has no `done` and whose process is gone is a half-made cluster (the `up` was killed, even by
  SIGKILL): every later `up`, `down`, `status`, `shape`, `run` or `exec` finds it and removes
  everything it lists (and everything else carrying the cluster's names).
"""

from __future__ import annotations

import json
import os
import time

from .names import ClusterNames
from .system import alive, start_time

JOURNAL = "journal"
STATE = "state.json"


def load(names: ClusterNames) -> dict | None:
    try:
        return json.loads((names.state_dir / STATE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def save(state: dict) -> None:
    folder = ClusterNames(state["name"]).state_dir
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(folder / STATE)


class Journal:
    def __init__(self, names: ClusterNames):
        self.path = names.state_dir / JOURNAL

    def _append(self, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def begin(self) -> None:
        pid = os.getpid()
        self._append({"up": pid, "start": start_time(pid), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def will_make(self, kind: str, what: str) -> None:
        self._append({"make": kind, "name": str(what)})

    def done(self) -> None:
        self._append({"done": os.getpid()})

    def entries(self) -> list[dict]:
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:      # a line cut by a crash: what was before it stands
                break
        return out


def unfinished_up(names: ClusterNames) -> dict | None:
    """The last `up` of this cluster if it never finished: {pid, running, made: [(kind, name)]}."""
    entries = Journal(names).entries()
    starts = [i for i, e in enumerate(entries) if "up" in e]
    if not starts:
        return None
    last = starts[-1]
    tail = entries[last + 1:]
    if any("done" in e for e in tail):
        return None
    head = entries[last]
    return {"pid": head["up"], "running": alive(head["up"], head.get("start")),
            "made": [(e["make"], e["name"]) for e in tail if "make" in e]}
