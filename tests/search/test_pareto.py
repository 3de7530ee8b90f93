"""Tests for merge_env/search/pareto.py: preferences, scalarisation, front, hypervolume, the JSONL archive."""

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from merge_env.errors import ConfigError
from merge_env.search.archive import Archive, Entry
from merge_env.search.pareto import (
    hypervolume,
    ideal_point,
    non_dominated,
    normalise,
    sample_preferences,
    scalarise,
    tchebycheff,
    weighted_sum,
)

OBJ = ("math", "code")


# ----------------------------------------------------------------------------- preferences
def test_preferences_on_simplex_and_seeded():
    p = sample_preferences(500, 3, np.random.default_rng(0))
    assert p.shape == (500, 3)
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(p, sample_preferences(500, 3, np.random.default_rng(0)))
    assert not np.allclose(p, sample_preferences(500, 3, np.random.default_rng(1)))


def test_dirichlet_one_is_uniform_on_simplex():
    # Dirichlet(1,1,1): mean 1/3 per coordinate, P(λ_1 > 1/2) = (1 - 1/2)^2 = 1/4.
    p = sample_preferences(20000, 3, np.random.default_rng(0))
    np.testing.assert_allclose(p.mean(axis=0), 1 / 3, atol=0.01)
    assert abs((p[:, 0] > 0.5).mean() - 0.25) < 0.01
    # A large alpha concentrates rows near the centre.
    assert sample_preferences(1000, 3, np.random.default_rng(0), alpha=100.0).std() < 0.05


def test_preferences_edge_cases():
    np.testing.assert_array_equal(
        sample_preferences(4, 1, np.random.default_rng(0)), np.ones((4, 1))
    )
    assert sample_preferences(0, 2, np.random.default_rng(0)).shape == (0, 2)
    with pytest.raises(ConfigError, match="alpha"):
        sample_preferences(3, 2, np.random.default_rng(0), alpha=0.0)


# ----------------------------------------------------------------------------- normalise, scalarise
def test_ideal_and_normalise():
    rows = np.array([[0.8, 0.1], [0.2, 0.5], [0.4, 0.4]])
    z = ideal_point(rows)
    np.testing.assert_array_equal(z, [0.8, 0.5])
    np.testing.assert_allclose(normalise(rows, z), [[1.0, 0.2], [0.25, 1.0], [0.5, 0.8]])
    np.testing.assert_allclose(normalise(rows[0], z), [1.0, 0.2])
    nadir = np.array([0.0, 0.1])
    np.testing.assert_allclose(normalise(rows, z, nadir), [[1.0, 0.0], [0.25, 1.0], [0.5, 0.75]])
    with pytest.raises(ConfigError):
        ideal_point(np.zeros((0, 2)))


def test_normalise_guards_zero_and_negative_ideal(caplog):
    with caplog.at_level(logging.WARNING, logger="merge_env.search.pareto"):
        f = normalise(np.array([[0.5, 0.0], [0.25, 0.0]]), np.array([0.5, 0.0]))
    np.testing.assert_array_equal(f, [[1.0, 0.0], [0.5, 0.0]])
    assert "zero range" in caplog.text
    with pytest.raises(ConfigError, match="nadir"):
        normalise(np.array([[-2.0, 0.5]]), np.array([-1.0, 0.5]))
    # With a nadir, a negative (log-likelihood) objective is fine and keeps its order.
    np.testing.assert_allclose(
        normalise(np.array([[-2.0], [-1.0]]), np.array([-1.0]), np.array([-3.0])), [[0.5], [1.0]]
    )


def test_weighted_sum_and_tchebycheff_hand_cases():
    f = np.array([[1.0, 0.0], [0.0, 1.0], [0.4, 0.4]])
    pref, ideal = np.array([0.5, 0.5]), np.ones(2)
    np.testing.assert_allclose(weighted_sum(f, pref), [0.5, 0.5, 0.4])
    np.testing.assert_allclose(tchebycheff(f, pref, ideal), [-0.5, -0.5, -0.3])
    # The middle point sits in a non-convex dent: the weighted sum can never prefer it,
    # Tchebycheff does (the reason DESIGN offers both).
    assert np.argmax(scalarise(f, pref, ideal, "weighted_sum")) != 2
    assert np.argmax(scalarise(f, pref, ideal, "tchebycheff")) == 2
    assert weighted_sum(np.array([0.2, 0.6]), np.array([0.25, 0.75])) == pytest.approx(0.5)
    assert isinstance(tchebycheff(np.array([0.2, 0.6]), np.array([0.25, 0.75]), ideal), float)
    assert tchebycheff(np.array([0.2, 0.6]), np.array([0.25, 0.75]), ideal) == pytest.approx(-0.3)
    # One preference per row broadcasts too.
    prefs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(weighted_sum(f, prefs), [1.0, 1.0, 0.4])


def test_tchebycheff_never_counts_beating_the_ideal_against_a_score():
    # z* is the best single model; a merge that beats it on a task must not score lower for it
    pref, ideal = np.array([0.5, 0.5]), np.ones(2)
    at, above, both = np.array([1.0, 1.0]), np.array([1.2, 1.0]), np.array([1.2, 1.1])
    assert tchebycheff(at, pref, ideal) == 0.0
    assert tchebycheff(above, pref, ideal) == 0.0  # weakly better: a tie, never a loss
    assert tchebycheff(both, pref, ideal) == pytest.approx(0.05)  # strictly better: higher
    assert tchebycheff(np.array([1.2, 0.8]), pref, ideal) == pytest.approx(-0.1)
    # monotone: raising any score never lowers the value, whatever the ideal
    rng = np.random.default_rng(0)
    f = rng.uniform(0.0, 1.5, size=(500, 3))
    g = f + rng.uniform(0.0, 0.5, size=f.shape) * (rng.random(f.shape) < 0.5)
    prefs = rng.dirichlet(np.ones(3), size=500)
    assert np.all(tchebycheff(g, prefs, np.ones(3)) >= tchebycheff(f, prefs, np.ones(3)))


def test_best_picks_the_front_among_tied_scalarised_values():
    arch = Archive(None, OBJ)
    arch.add("lo", {}, {"math": 0.9, "code": 0.1}, evaluations=1, source="t")
    arch.add("hi", {}, {"math": 0.9, "code": 0.9}, evaluations=2, source="t")
    ideal = np.array([0.9, 0.9])
    for kind in ("tchebycheff", "weighted_sum"):
        assert arch.best(np.array([1.0, 0.0]), ideal, kind).recipe_hash == "hi"
    # a merge above the best single model on one task: Tchebycheff ties it with the ideal, the
    # front decides, and the dominated entry at the ideal is not picked
    arch.add("beats", {}, {"math": 1.08, "code": 0.9}, evaluations=3, source="t")
    assert arch.best(np.array([0.5, 0.5]), ideal).recipe_hash == "beats"
    # a zero weight: Tchebycheff ties "hi" (at the ideal) with a merge far above it on the task
    # asked for; the tie goes to the one better on that task, not to the first
    arch2 = Archive(None, OBJ)
    arch2.add("at", {}, {"math": 0.9, "code": 0.9}, evaluations=1, source="t")
    arch2.add("above", {}, {"math": 1.0, "code": 0.5}, evaluations=2, source="t")
    assert arch2.best(np.array([1.0, 0.0]), ideal).recipe_hash == "above"
    assert arch2.best(np.array([0.0, 1.0]), ideal).recipe_hash == "at"


def test_scalarise_errors():
    with pytest.raises(ConfigError, match="kind"):
        scalarise(np.ones(2), np.ones(2) / 2, np.ones(2), kind="pbi")
    with pytest.raises(ConfigError, match="objectives"):
        weighted_sum(np.ones(3), np.ones(2) / 2)
    with pytest.raises(ConfigError, match="non-negative"):
        tchebycheff(np.ones(2), np.array([1.5, -0.5]), np.ones(2))


# ----------------------------------------------------------------------------- front
def test_non_dominated_2d_with_duplicates():
    pts = np.array([[1, 3], [2, 2], [1, 3], [1, 2], [3, 1], [0, 0], [2, 2], [3, 0]], float)
    # Duplicates of a front point: only the first survives; (1,2), (0,0), (3,0) are dominated.
    np.testing.assert_array_equal(non_dominated(pts), [1, 1, 0, 0, 1, 0, 0, 0])


def test_non_dominated_3d_and_edges():
    pts = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5], [0.4, 0.5, 0.5], [1, 0, 0]])
    np.testing.assert_array_equal(non_dominated(pts), [1, 1, 1, 1, 0, 0])
    assert non_dominated(np.zeros((0, 3))).shape == (0,)
    np.testing.assert_array_equal(non_dominated(np.array([[1.0], [2.0], [2.0]])), [0, 1, 0])
    with pytest.raises(ConfigError, match="NaN"):
        non_dominated(np.array([[np.nan, 1.0]]))


def _brute_front(p):
    keep = np.ones(len(p), bool)
    for i, j in itertools.permutations(range(len(p)), 2):
        dominates = np.all(p[j] >= p[i]) and np.any(p[j] > p[i])
        earlier_twin = j < i and np.array_equal(p[j], p[i])
        if dominates or earlier_twin:
            keep[i] = False
    return keep


def test_non_dominated_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        # Few distinct values: accuracy on a small eval set ties a lot.
        p = rng.integers(0, 4, size=(rng.integers(1, 15), rng.integers(2, 5))).astype(float)
        np.testing.assert_array_equal(non_dominated(p), _brute_front(p))


# ----------------------------------------------------------------------------- hypervolume
def test_hypervolume_2d_boxes_and_staircase():
    assert hypervolume(np.array([[2.0, 3.0]]), np.zeros(2)) == pytest.approx(6.0)
    assert hypervolume(np.array([2.0, 3.0]), np.array([1.0, 1.0])) == pytest.approx(2.0)
    stairs = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume(stairs, np.zeros(2)) == pytest.approx(3 + 2 + 1)
    # Dominated points, duplicates and points not beyond the reference add nothing.
    extra = np.vstack([stairs, [[1.0, 1.0], [2.0, 2.0], [5.0, -1.0], [-1.0, 9.0], [4.0, 0.0]]])
    assert hypervolume(extra, np.zeros(2)) == pytest.approx(6.0)
    assert hypervolume(np.array([[-1.0, -1.0]]), np.zeros(2)) == 0.0
    assert hypervolume(np.zeros((0, 2)), np.zeros(2)) == 0.0


def test_hypervolume_3d_boxes_and_staircase():
    assert hypervolume(np.array([[1.0, 2.0, 3.0]]), np.zeros(3)) == pytest.approx(6.0)
    # Two boxes 2x1x1 and 1x2x1 overlap in a unit cube.
    assert hypervolume(np.array([[2.0, 1, 1], [1, 2, 1]]), np.zeros(3)) == pytest.approx(3.0)
    # Three 3x1x1 bars along each axis: inclusion-exclusion 3*3 - 3*1 + 1.
    bars = np.array([[3.0, 1, 1], [1, 3, 1], [1, 1, 3]])
    assert hypervolume(bars, np.zeros(3)) == pytest.approx(7.0)
    assert hypervolume(np.vstack([bars, [[0.5, 0.5, 0.5]]]), np.zeros(3)) == pytest.approx(7.0)
    with pytest.raises(ConfigError, match="reference"):
        hypervolume(bars, np.zeros(2))


# ----------------------------------------------------------------------------- archive
def _fill(arch, n=5):
    rows = [(0.8, 0.1), (0.2, 0.5), (0.5, 0.4), (0.1, 0.1), (0.5, 0.4)]
    for i in range(n):
        m, c = rows[i % len(rows)]
        arch.add(
            recipe_hash=f"h{i}",
            recipe={"merge": {"method": "ties", "weights": [m, c]}, "path": [[0, i, 1.0]]},
            scores={"code": c, "math": m},  # key order does not matter; stored in objectives order
            evaluations=i + 1,
            source="test",
            test_scores={"math": m - 0.05, "code": c} if i % 2 == 0 else None,
            extra={"wall_s": np.float32(0.5), "ll": np.array([-1.0, -2.0]), "i": np.int64(i)},
        )


def test_archive_roundtrip(tmp_path):
    path = tmp_path / "run" / "archive.jsonl"
    arch = Archive(path, OBJ)
    _fill(arch)
    assert len(arch) == 5 and [e.index for e in arch] == list(range(5))
    assert len(path.read_text().splitlines()) == 5
    back = Archive.load(path)
    assert back.objectives == OBJ and not back.dropped_tail
    assert back.entries == arch.entries
    e = back.get("h2")
    assert isinstance(e, Entry) and e.scores == {"math": 0.5, "code": 0.4}
    assert e.extra == {"wall_s": 0.5, "ll": [-1.0, -2.0], "i": 2}
    assert back.get("nope") is None
    np.testing.assert_array_equal(back.score_matrix()[:2], [[0.8, 0.1], [0.2, 0.5]])
    # The front keeps the first of two equal score vectors (h2, not h4).
    assert [e.recipe_hash for e in back.front()] == ["h0", "h1", "h2"]
    assert np.isnan(back.score_matrix("test")[1]).all()
    assert [e.recipe_hash for e in back.front("test")] == ["h0", "h2"]
    # Another objectives order only permutes columns.
    swapped = Archive.load(path, objectives=("code", "math"))
    np.testing.assert_array_equal(swapped.score_matrix(), back.score_matrix()[:, ::-1])


def test_archive_in_memory_and_validation(tmp_path):
    arch = Archive(None, OBJ)
    _fill(arch, 2)
    assert len(arch) == 2 and arch.path is None
    with pytest.raises(ConfigError, match="objectives"):
        arch.add("x", {}, {"math": 1.0}, evaluations=3, source="t")
    with pytest.raises(ConfigError, match="non-finite"):
        arch.add("x", {}, {"math": float("nan"), "code": 1.0}, evaluations=3, source="t")
    with pytest.raises(ConfigError, match="JSON"):
        arch.add("x", {"op": object()}, {"math": 1.0, "code": 1.0}, evaluations=3, source="t")
    with pytest.raises(ConfigError, match="evaluations"):
        arch.add("x", {}, {"math": 1.0, "code": 1.0}, evaluations=-1, source="t")
    assert len(arch) == 2  # failed adds leave no trace
    path = tmp_path / "a.jsonl"
    _fill(Archive(path, OBJ), 2)
    with pytest.raises(ConfigError, match="Archive.load"):
        Archive(path, OBJ)
    resumed = Archive.open(path, OBJ)
    resumed.add("h9", {}, {"math": 1.0, "code": 1.0}, evaluations=9, source="t")
    assert [e.index for e in Archive.load(path)] == [0, 1, 2]
    with pytest.raises(ConfigError, match="objectives"):
        Archive.load(path, objectives=("math", "chat"))
    with pytest.raises(ConfigError, match="no archive"):
        Archive.load(tmp_path / "missing.jsonl")


def test_archive_drops_torn_last_line_and_appends_after(tmp_path, caplog):
    path = tmp_path / "archive.jsonl"
    _fill(Archive(path, OBJ), 4)
    full = path.read_bytes()
    with open(path, "ab") as fh:  # what a kill in the middle of the 5th write leaves
        fh.write(b'{"index":4,"recipe_hash":"h4","recipe":{"merge":{"meth')
    with caplog.at_level(logging.WARNING, logger="merge_env.search.archive"):
        arch = Archive.load(path)
    assert arch.dropped_tail and "line 5" in caplog.text
    assert len(arch) == 4 and path.read_bytes() == full  # repaired in place
    arch.add("h4", {}, {"math": 0.9, "code": 0.9}, evaluations=5, source="t")
    again = Archive.load(path)
    assert not again.dropped_tail and [e.recipe_hash for e in again][-2:] == ["h3", "h4"]
    assert again.entries == arch.entries


def test_archive_drops_nul_tail_and_keeps_line_missing_newline(tmp_path):
    path = tmp_path / "archive.jsonl"
    _fill(Archive(path, OBJ), 3)
    full = path.read_bytes()
    path.write_bytes(full + b"\x00" * 64)  # a crash can leave a zero-filled tail
    arch = Archive.load(path)
    assert arch.dropped_tail and len(arch) == 3 and path.read_bytes() == full
    path.write_bytes(full[:-1])  # whole line written, newline lost: nothing to drop
    arch = Archive.load(path)
    assert not arch.dropped_tail and len(arch) == 3 and path.read_bytes() == full


def test_archive_garbled_middle_line_is_an_error(tmp_path):
    path = tmp_path / "archive.jsonl"
    _fill(Archive(path, OBJ), 3)
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1][:30]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ConfigError, match=r"archive\.jsonl line 2"):
        Archive.load(path)
    # A well-formed last line with wrong content is corruption, not a torn write.
    lines = path.read_bytes().split(b"\n")
    lines[1] = json.dumps({"index": 7}).encode()
    path.write_bytes(b"\n".join(lines[:2]) + b"\n")
    with pytest.raises(ConfigError, match="line 2"):
        Archive.load(path)


_WRITER = textwrap.dedent(
    """
    import sys
    import merge_env.search.archive as pareto

    class Tearing:  # writes half of the line, then waits on stdin for the parent's SIGKILL
        def __init__(self, fh):
            self.fh = fh
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.fh.__exit__(*exc)
        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            print("torn", flush=True)
            sys.stdin.readline()
        def __getattr__(self, name):
            return getattr(self.fh, name)

    path, tear_at = sys.argv[1], int(sys.argv[2])
    arch = pareto.Archive(path, ("math", "code"))
    pad = "x" * 100_000
    i = 0
    while True:
        if i == tear_at:
            pareto.open = lambda *a, **k: Tearing(open(*a, **k))
        arch.add(f"h{i}", {"i": i}, {"math": i / 1e3, "code": 1 - i / 1e3}, i + 1, "w", extra={"pad": pad})
        print(i, flush=True)
        i += 1
    """
)


@pytest.mark.parametrize("tear_at", [12, -1], ids=["kill-inside-write", "kill-anywhere"])
def test_archive_survives_sigkill_of_writer(tmp_path, tear_at):
    path = tmp_path / "archive.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(tear_at)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    acked = -1
    while acked < 20:
        line = proc.stdout.readline()
        assert line, "writer exited early"
        if line.strip() == "torn":
            break
        acked = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()
    arch = Archive.load(path)
    # Every acknowledged add is on disk; at most the line in flight is lost, and that is reported.
    assert len(arch) >= acked + 1
    assert [e.recipe_hash for e in arch] == [f"h{i}" for i in range(len(arch))]
    if tear_at >= 0:
        assert arch.dropped_tail and len(arch) == tear_at
    assert path.read_bytes().endswith(b"\n")
    arch.add("after", {}, {"math": 1.0, "code": 1.0}, evaluations=10**6, source="t")
    back = Archive.load(path)
    assert not back.dropped_tail and back.entries == arch.entries


def test_hypervolume_curve_and_best():
    arch = Archive(None, OBJ)
    ideal = np.array([0.8, 0.5])
    _fill(arch)
    curve = arch.hypervolume_curve(ideal)
    # Normalised points: (1, .2), (.25, 1), (.625, .8), then dominated ones.
    a1 = 0.2
    a2 = a1 + 0.25 * 0.8
    a3 = 1.0 * 0.2 + 0.625 * (0.8 - 0.2) + 0.25 * (1.0 - 0.8)
    expected = [(1, a1), (2, a2), (3, a3), (4, a3), (5, a3)]
    assert [c[0] for c in curve] == [c[0] for c in expected]
    np.testing.assert_allclose([c[1] for c in curve], [c[1] for c in expected])
    assert curve[-1][1] == pytest.approx(hypervolume(normalise(arch.score_matrix(), ideal), [0, 0]))
    # Entries recorded at the same evaluation count collapse to the last.
    arch.add("same", {}, {"math": 0.8, "code": 0.5}, evaluations=5, source="t")
    curve = arch.hypervolume_curve(ideal, reference=np.zeros(2))
    assert len(curve) == 5 and curve[-1] == (5, pytest.approx(1.0))
    # h0 (0.8, 0.1) and "same" (0.8, 0.5) tie under a zero weight on code: the one on the front wins
    assert arch.best(np.array([1.0, 0.0]), ideal, "weighted_sum").recipe_hash == "same"
    assert arch.best(np.array([1.0, 0.0]), ideal).recipe_hash == "same"
    assert arch.best(np.array([0.5, 0.5]), ideal).recipe_hash == "same"
    arch2 = Archive(None, OBJ)
    _fill(arch2)
    assert arch2.best(np.array([0.5, 0.5]), ideal).recipe_hash == "h2"
    assert arch2.best(np.array([0.0, 1.0]), ideal, "weighted_sum").recipe_hash == "h1"


def test_hypervolume_curve_on_test_split_skips_unscored_entries():
    arch = Archive(None, OBJ)
    _fill(arch)  # test scores on h0, h2, h4 only
    curve = arch.hypervolume_curve(np.array([0.8, 0.5]), split="test")
    assert [c[0] for c in curve] == [1, 2, 3, 4, 5]
    assert curve[0][1] == curve[1][1] > 0 and curve[2][1] > curve[1][1]
