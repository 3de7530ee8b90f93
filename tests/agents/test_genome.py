"""The flat genome codec (agents/genome.py): layout, identity, coverage, encodings, ablation levels."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from agents.genome import Genome, PoolFacts, pool_facts
from merge_env.env import DEFAULT_COEFFICIENTS, weight_lattice
from merge_env.errors import ConfigError
from merge_env.search.recipe import BASE, MERGED, Recipe, Slot, param_merge

EXPERTS = ("math", "code", "lex")
L = 4
FACTS = PoolFacts(EXPERTS, L)
SOURCES = (MERGED, BASE, *EXPERTS)
C = len(DEFAULT_COEFFICIENTS)


def _weights(recipe: Recipe) -> dict[str, float]:
    return {m.model: m.parameters["weight"] for m in recipe.merge.models}


def _densities(recipe: Recipe) -> dict[str, float]:
    return {m.model: m.parameters["density"] for m in recipe.merge.models}


def _arch(g: Genome, x: np.ndarray) -> np.ndarray:
    """The (candidates, 2) view of x's architecture genes."""
    return x[g.n_param :].reshape(-1, 2)


@pytest.mark.parametrize(
    ("level", "encoding", "density_genes", "dim"),
    [
        ("param", "aligned", False, 3),
        ("param", "indicator", True, 6),
        ("arch", "aligned", False, 2 * L),
        ("both", "aligned", True, 6 + 2 * L),
        ("arch", "indicator", False, 2 * 2 * L * len(SOURCES)),
        ("both", "indicator", False, 3 + 2 * 2 * L * len(SOURCES)),
    ],
)
def test_dim_and_gene_names(level: str, encoding: str, density_genes: bool, dim: int) -> None:
    g = Genome(FACTS, level=level, encoding=encoding, density_genes=density_genes, repeats=2)
    assert g.dim == dim == len(g.gene_names) == len(set(g.gene_names))
    assert g.identity().shape == (dim,)
    assert np.all((g.identity() >= 0) & (g.identity() <= 1))


@pytest.mark.parametrize("encoding", ["aligned", "indicator"])
@pytest.mark.parametrize("level", ["param", "arch", "both"])
@pytest.mark.parametrize("weights", ["simplex", "box"])
def test_identity_is_the_envs_uniform_merge_with_identity_path(
    encoding: str, level: str, weights: str
) -> None:
    g = Genome(FACTS, level=level, encoding=encoding, weights=weights, density_genes=True)
    recipe = g.decode(g.identity())
    assert recipe.path is None
    assert recipe.merge.merge_method == "ties" and recipe.merge.base_model == BASE
    assert _weights(recipe) == pytest.approx(dict.fromkeys(EXPERTS, 1 / 3))
    assert _densities(recipe) == pytest.approx(dict.fromkeys(EXPERTS, 0.5))
    # the env's lattice point (1/3, 1/3, 1/3) with STOP at once: same hash, so same cache entry
    uniform = next(w for w in weight_lattice(3, 3) if w == (1 / 3,) * 3)
    env_recipe = Recipe(merge=param_merge("ties", dict(zip(EXPERTS, uniform)), density=0.5))
    assert recipe.hash == env_recipe.hash


def test_aligned_decode_covers_every_source_layer_and_scale() -> None:
    g = Genome(FACTS, level="arch", encoding="aligned")
    seen = set()
    for s, c in itertools.product(range(len(SOURCES)), range(C)):
        x = np.empty(g.dim)
        _arch(g, x)[:] = ((s + 0.5) / len(SOURCES), (c + 0.5) / C)
        recipe = g.decode(x)
        if recipe.path is None:  # merged at scale 1 in every layer is the identity path
            assert (SOURCES[s], DEFAULT_COEFFICIENTS[c]) == (MERGED, 1.0)
            path = recipe.resolved_path(L)
            assert path == tuple(Slot(MERGED, t) for t in range(L))
        else:
            path = recipe.path
        assert [slot.layer for slot in path] == list(range(L))  # slot t takes layer t
        seen |= {(slot.source, slot.layer, slot.scale) for slot in path}
    assert seen == set(itertools.product(SOURCES, range(L), DEFAULT_COEFFICIENTS))
    # the bin edges: gene 0 is the first choice, gene 1 the last
    x = np.zeros(g.dim)
    assert g.decode(x).path[0] == Slot(MERGED, 0, DEFAULT_COEFFICIENTS[0])
    x[:] = 1.0
    assert g.decode(x).path[0] == Slot(EXPERTS[-1], 0, DEFAULT_COEFFICIENTS[-1])


def test_aligned_changes_one_slot_at_a_time() -> None:
    g = Genome(FACTS, level="arch", encoding="aligned")
    x = g.identity()
    _arch(g, x)[2, 0] = (SOURCES.index("code") + 0.5) / len(SOURCES)
    assert g.decode(x).path == (
        Slot(MERGED, 0), Slot(MERGED, 1), Slot("code", 2), Slot(MERGED, 3),
    )  # fmt: skip
    x = g.identity()
    _arch(g, x)[0, 1] = 0.99
    assert g.decode(x).path[0] == Slot(MERGED, 0, 1.5)


def test_indicator_single_candidates_cover_every_source_layer_and_scale() -> None:
    g = Genome(FACTS, level="arch", encoding="indicator", repeats=2)
    assert len(g.candidates) == 2 * L * len(SOURCES)
    seen = set()
    for i, c in itertools.product(range(len(g.candidates)), range(C)):
        x = np.zeros(g.dim)
        _arch(g, x)[i] = (0.9, (c + 0.5) / C)
        (slot,) = g.decode(x).path
        layer, s = g.candidates[i]
        assert slot == Slot(SOURCES[s], layer, DEFAULT_COEFFICIENTS[c])
        seen.add((slot.source, slot.layer, slot.scale))
    assert seen == set(itertools.product(SOURCES, range(L), DEFAULT_COEFFICIENTS))


def test_indicator_all_off_is_identity_and_all_on_is_capped_in_order() -> None:
    g = Genome(FACTS, level="both", encoding="indicator", t_max=7)
    x = np.random.default_rng(0).random(g.dim)
    _arch(g, x)[:, 0] = 0.5  # the threshold itself is off: include only when > 0.5
    assert g.decode(x).path is None
    _arch(g, x)[:, 0] = 1.0
    path = g.decode(x).path
    assert len(path) == 7
    # candidates run repeat -> layer -> source: layer 0 of every source, then layer 1
    assert [(s.source, s.layer) for s in path] == [(src, 0) for src in SOURCES] + [
        (MERGED, 1),
        (BASE, 1),
    ]
    assert Genome(FACTS, encoding="indicator").t_max == L + L // 2  # the env's default


def test_indicator_identity_flips_into_a_real_path() -> None:
    g = Genome(FACTS, level="arch", encoding="indicator")
    x = g.identity()
    merged_l1 = g.candidates.index((1, 0))
    _arch(g, x)[merged_l1, 0] = 0.0  # drop layer 1 of the merge
    assert g.decode(x).path == (Slot(MERGED, 0), Slot(MERGED, 2), Slot(MERGED, 3))
    x = g.identity()
    extra = g.candidates.index((3, SOURCES.index("lex")), L * len(SOURCES))  # repeat 1
    _arch(g, x)[extra, 0] = 1.0
    assert g.decode(x).path == (*(Slot(MERGED, t) for t in range(L)), Slot("lex", 3))


def test_levels_decode_as_promised() -> None:
    rng = np.random.default_rng(1)
    param = Genome(FACTS, level="param", weights="simplex")
    arch = Genome(FACTS, level="arch")
    both = Genome(FACTS, level="both", weights="simplex")
    uniform = param.decode(param.identity()).merge
    merges, paths = set(), set()
    for _ in range(20):
        assert param.decode(param.sample(rng, 1)[0]).path is None
        assert arch.decode(arch.sample(rng, 1)[0]).merge == uniform
        r = both.decode(both.sample(rng, 1)[0])
        merges.add(r.merge.to_mergekit().__repr__())
        paths.add(r.path)
    assert len(merges) == 20 and len(paths) > 1
    # "both" is "param" genes followed by "arch" genes
    x = both.sample(rng, 1)[0]
    r = both.decode(x)
    assert r.merge == param.decode(x[: param.dim]).merge
    assert r.path == arch.decode(x[param.dim :]).path


def test_weight_modes_and_density_genes() -> None:
    simplex = Genome(
        FACTS, level="param", weights="simplex", density_genes=True, density_range=(0.2, 1.0)
    )
    box = Genome(FACTS, level="param", weights="box")
    x = np.array([0.2, 0.6, 0.2, 0.0, 0.5, 1.0])
    r = simplex.decode(x)
    assert _weights(r) == pytest.approx({"math": 0.2, "code": 0.6, "lex": 0.2})
    assert _densities(r) == pytest.approx({"math": 0.2, "code": 0.6, "lex": 1.0})
    halved = x.copy()
    halved[:3] /= 2  # simplex weights depend on the genes' ratios only
    assert _weights(simplex.decode(halved)) == pytest.approx(_weights(r))
    assert _weights(box.decode([0.1, 0.4, 1.0])) == pytest.approx(
        {"math": 0.1, "code": 0.4, "lex": 1.0}
    )
    # all-zero weights would divide by zero in normalising operators: read as uniform
    assert _weights(box.decode([0.0, 0.0, 0.0])) == pytest.approx(dict.fromkeys(EXPERTS, 1 / 3))
    linear = Genome(FACTS, level="param", merge_method="linear").decode([0.5, 0.5, 0.5])
    assert linear.merge.base_model is None and "density" not in linear.merge.models[0].parameters


def test_decode_clips_and_rejects_bad_genomes() -> None:
    g = Genome(FACTS)
    x = g.identity()
    assert g.decode(x + 0.0).hash == g.decode(np.clip(x, 0, 1)).hash
    y = x.copy()
    y[0] = -3.0  # clipped to 0
    z = x.copy()
    z[0] = 0.0
    assert g.decode(y).hash == g.decode(z).hash
    with pytest.raises(ConfigError, match="genes"):
        g.decode(x[:-1])
    x[1] = np.nan
    with pytest.raises(ConfigError, match="finite"):
        g.decode(x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"level": "layers"}, "genome.level"),
        ({"encoding": "dfs"}, "genome.encoding"),
        ({"weights": "softmax"}, "genome.weights"),
        ({"merge_method": "slerp"}, "per-model weight"),
        ({"merge_method": "magic"}, "unknown merge method"),
        ({"coefficients": (0.5, 2.0)}, "coefficients"),
        ({"density": 0.05}, "density"),
        ({"repeats": 0}, "repeats"),
        ({"t_max": 0}, "t_max"),
    ],
)
def test_bad_options_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Genome(FACTS, **kwargs)


def test_pool_facts_from_problem_pool_or_mapping() -> None:
    pool = SimpleNamespace(experts=list(EXPERTS), num_layers=L)
    assert pool_facts(pool) == pool_facts(SimpleNamespace(pool=pool)) == FACTS
    assert pool_facts({"experts": EXPERTS, "num_layers": L}) == FACTS
    with pytest.raises(ConfigError, match="experts"):
        pool_facts(SimpleNamespace(experts=[], num_layers=L))


@pytest.mark.parametrize("encoding", ["aligned", "indicator"])
def test_random_genomes_decode_to_valid_recipes(encoding: str) -> None:
    g = Genome(FACTS, encoding=encoding, density_genes=True)
    rng = np.random.default_rng(2)
    for x in g.sample(rng, 30):
        recipe = g.decode(x)
        recipe.validate([BASE, *EXPERTS], L)
        assert Recipe.from_dict(recipe.to_dict()).hash == recipe.hash
        assert recipe.path is None or len(recipe.path) <= g.t_max


# -- free mode: the env's own space ----------------------------------------------------------------
def _fake_problem(facts: PoolFacts = FACTS) -> SimpleNamespace:
    """What MergeEnv reads of a problem to build its spaces (no model is loaded or scored)."""
    pool = SimpleNamespace(
        experts=list(facts.experts), num_layers=facts.num_layers,
        names=[BASE, *facts.experts],
    )  # fmt: skip
    return SimpleNamespace(pool=pool, objectives=list(facts.experts))


def _env_builds(env, recipe: Recipe) -> Recipe:
    """Feed the env the actions that spell ``recipe`` and return the recipe it builds."""
    from agents.ppo.offline import candidate_actions
    from merge_env.search.proposals import Candidate

    merge = next(i for i, m in enumerate(env.merges) if m == recipe.merge)
    # aligned mode has no STOP: the plain merge is its identity path, spelled out
    slots = recipe.path or (recipe.resolved_path(env.L) if env.mode == "aligned" else ())
    actions, _ = candidate_actions(env, Candidate(merge, tuple(slots)))
    env.reset(seed=0)
    for a in actions:
        _, _, done, _, info = env.step(a)
    assert done
    return info["pending"]


@pytest.mark.parametrize("mode", ["free", "aligned"])
@pytest.mark.parametrize("level", ["param", "arch", "both"])
def test_every_genome_decodes_to_a_recipe_the_env_builds(mode: str, level: str) -> None:
    from merge_env.env import MergeEnv

    env = MergeEnv(_fake_problem(), mode=mode, defer_scoring=True,
                   param_mode="fixed" if level == "arch" else "policy")  # fmt: skip
    g = Genome(FACTS, level=level, encoding=mode)
    assert g.t_max == env.t_max and g.facts.sources == tuple(env.sources)
    rng = np.random.default_rng(0)
    for x in [g.identity(), *g.sample(rng, 200)]:
        recipe = g.decode(x)
        recipe.validate([BASE, *EXPERTS], L)
        built = _env_builds(env, recipe)
        if mode == "free":
            assert built.hash == recipe.hash  # the same recipe: same cache entry and score
        else:  # the genome writes the identity path as None (the same model, one cache entry)
            assert built.merge == recipe.merge and built.resolved_path(L) == recipe.resolved_path(L)
        assert built.merge in env.merges  # a point of the env's weight lattice


def test_free_random_genomes_cover_repeats_drops_depths_and_scales() -> None:
    g = Genome(FACTS)  # the defaults are the env's: free mode, the lattice in sixths
    assert (g.encoding, g.weights, g.lattice_steps, g.t_max) == ("free", "lattice", 6, L + L // 2)
    assert g.dim == len(EXPERTS) + 4 * g.t_max == len(g.gene_names)
    paths = [g.decode(x).path for x in g.sample(np.random.default_rng(1), 300)]
    real = [p for p in paths if p is not None]
    layers = [[s.layer for s in p] for p in real]
    assert any(len(set(x)) < len(x) for x in layers)  # a layer repeated
    assert any(set(range(L)) - set(x) for x in layers)  # a layer dropped
    assert any(x != sorted(x) for x in layers)  # layers out of order
    assert {len(p) for p in real} >= {2, L, g.t_max}  # shallower, as deep, deeper
    assert {s.scale for p in real for s in p} == set(DEFAULT_COEFFICIENTS)
    assert {s.source for p in real for s in p} == set(SOURCES)


def test_lattice_weights_are_the_envs_merges() -> None:
    lattice = {w for w in weight_lattice(3, 6)}
    g = Genome(FACTS, level="param")
    rng = np.random.default_rng(3)
    seen = {tuple(_weights(g.decode(x)).values()) for x in g.sample(rng, 400)}
    assert seen <= lattice and len(seen) > 15


def test_encode_round_trips_env_recipes_and_refuses_a_pool_model() -> None:
    g = Genome(FACTS)
    rng = np.random.default_rng(4)
    for x in g.sample(rng, 50):
        recipe = g.decode(x)
        y = g.encode(recipe)
        assert y is not None and g.decode(y).hash == recipe.hash
    assert g.encode(Recipe.single(BASE)) is None  # a pool model as it is: not in the space
    ta = Recipe(merge=param_merge("task_arithmetic", dict.fromkeys(EXPERTS, 1.0)))
    assert g.encode(ta) is None  # another operator
