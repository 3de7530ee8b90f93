"""Run tracking: W&B is a core dependency, charts are drawn against evaluations spent, and
``Tracker.log`` honours its step. W&B itself is replaced by a recorder (no process, no files)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from experiments.tracking import STEP_METRIC, WandbTracker
from merge_env.search.archive import Entry

REPO = Path(__file__).resolve().parents[2]


class _Run:
    """What WandbTracker touches of a wandb Run, recording every call."""

    name, dir = "recorded", "/nowhere"

    def __init__(self) -> None:
        self.defined: list[tuple[str, dict]] = []
        self.rows: list[dict] = []

    def define_metric(self, name: str, **options) -> None:
        self.defined.append((name, options))

    def log(self, row: dict, **options) -> None:
        assert not options, f"W&B's own step must stay untouched, got {options}"
        self.rows.append(dict(row))


@pytest.fixture
def tracker(monkeypatch) -> WandbTracker:
    run = _Run()
    fake = types.SimpleNamespace(init=lambda **kwargs: run)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return WandbTracker(mode="offline", name="t")


def test_wandb_is_a_core_dependency():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [d.split(">")[0].split("=")[0].strip() for d in project["dependencies"]]
    assert "wandb" in names  # logger=wandb is the default logger of conf/config.yaml


def test_every_chart_is_drawn_against_evaluations_spent(tracker):
    defined = dict(tracker.run.defined)
    assert STEP_METRIC == "merge/evaluations" and STEP_METRIC in defined
    assert defined["*"] == {"step_metric": STEP_METRIC}


def test_log_puts_its_step_on_the_evaluations_axis(tracker):
    tracker.log({"charts/hypervolume_final": 0.5}, step=12)
    tracker.log({"charts/hv_best_single_model": 0.25})
    assert tracker.run.rows == [
        {"charts/hypervolume_final": 0.5, STEP_METRIC: 12},
        {"charts/hv_best_single_model": 0.25},
    ]


def test_log_entry_records_the_evaluations_spent(tracker):
    entry = Entry(3, "h", {}, {"math": 0.5}, None, 7, "cmaes")
    tracker.log_entry(entry, hypervolume=0.1)
    (row,) = tracker.run.rows
    assert row[STEP_METRIC] == 7 and row["merge/math"] == 0.5 and row["charts/hypervolume"] == 0.1
