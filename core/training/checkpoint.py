"""Resuming: a checkpoint after every epoch that the same command resumes from after an interruption."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.training.config import TrainConfig


@dataclass
class Progress:
    """Where a run stands after its last finished epoch (what a checkpoint holds besides the variables)."""

    epochs_done: int = 0
    seconds: float = 0.0  # training time of the earlier parts of a resumed run
    best_loss: float = math.inf
    best_epoch: int = 0
    best_weights: list[np.ndarray] | None = None
    stopped: bool = False  # early, by patience or the time budget
    resumed: list[dict[str, Any]] = field(default_factory=list)


def run_key(config: TrainConfig, split_entries: list[list[str]]) -> str:
    """Identifies a run: its settings (all but the time budget) and its validation split. A checkpoint resumes only
    the run it came from."""
    settings = {**asdict(config), "max_minutes": None}
    text = json.dumps({"config": settings, "validation": split_entries}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """``<out>/<name>.checkpoint.npz``, rewritten after every epoch: every model variable (the dropout's random
    state included), the optimizer's (its step count drives the learning-rate schedule), the best epoch's weights
    and :class:`Progress`. Rerunning the same command after an interruption resumes from it with the same random
    streams, so the weights are those of an uninterrupted run; it is deleted once the run has written its model."""

    path: Path
    key: str

    def save(self, model: Any, progress: Progress, seconds: float) -> None:
        arrays = {f"model_{i}": np.asarray(v) for i, v in enumerate(model.variables)}
        arrays |= {f"optimizer_{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)}
        arrays |= {f"best_{i}": w for i, w in enumerate(progress.best_weights or [])}
        state = {**asdict(progress), "best_weights": None, "seconds": seconds, "key": self.key}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        with partial.open("wb") as out:  # a file object: numpy would otherwise append ".npz" to the name
            np.savez(out, state=np.array(json.dumps(state)), **arrays)
        os.replace(partial, self.path)  # a kill while writing leaves the previous checkpoint whole

    def rounds_done(self) -> int:
        """The epochs (rounds) the checkpoint has finished, read without loading its variables."""
        with np.load(self.path) as saved:
            return int(json.loads(str(saved["state"]))["epochs_done"])

    def restore(self, model: Any) -> Progress:
        """Load the checkpoint into a compiled ``model``; refused when it belongs to another run."""
        with np.load(self.path) as saved:
            state = json.loads(str(saved["state"]))
            if state.pop("key") != self.key:
                raise ValueError(
                    f"{self.path} belongs to another run (other settings or split): delete it or change --out"
                )
            model.optimizer.build(model.trainable_variables)
            for prefix, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
                for i, variable in enumerate(variables):
                    variable.assign(saved[f"{prefix}_{i}"])
            best = [saved[name] for name in sorted((k for k in saved.files if k.startswith("best_")), key=_index)]
        return Progress(**{**state, "best_weights": best or None})


def _index(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


PROJECT = Path(__file__).resolve().parents[2]


def code_version(project: Path = PROJECT) -> str:
    """The commit of this code (asked in the project's own folder, not the current one), with ``-dirty`` when its
    working tree has uncommitted changes; "unknown" when the project has no .git of its own (an unpacked release,
    a copy, even one inside another checkout), when git is missing, or when it fails or does not answer in 5 s."""
    if not (project / ".git").exists():
        return "unknown"
    try:
        command = ["git", "-C", str(project), "describe", "--always", "--dirty", "--abbrev=7"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):  # no git; TimeoutExpired
        return "unknown"
