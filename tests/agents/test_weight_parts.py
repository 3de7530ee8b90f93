"""Per-part merge weights (``weight_parts``): the genome's layout and codec, the tensors the
merge engine makes of them, and the agents and configs that take or refuse them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.cmaes import CMAESAgent
from agents.genome import Genome, PoolFacts
from agents.moead import MOEADAgent
from agents.ppo.agent import PPOAgent
from merge_env.env import MergeEnv
from merge_env.errors import ConfigError
from merge_env.merging.checkpoint import Checkpoint
from merge_env.merging.engine import MergeEngine
from merge_env.merging.plan import ParamMerge
from merge_env.search.recipe import BASE, Recipe, check_parts_cover, param_merge, uniform_merge

EXPERTS = ("math", "code", "lex")
FACTS = PoolFacts(EXPERTS, 4)
PARTS = ("self_attn", "mlp")


def _weight(recipe: Recipe, expert: str):
    return next(m.parameters["weight"] for m in recipe.merge.models if m.model == expert)


def test_layout_one_weight_gene_per_expert_and_part() -> None:
    g = Genome(FACTS, level="param", weight_parts=PARTS, density_genes=True)
    assert g.n_weights == 9 and g.n_param == g.dim == 12
    assert g.gene_names[:4] == ["weight[math:self_attn]", "weight[code:self_attn]",
                                "weight[lex:self_attn]", "weight[math:mlp]"]  # fmt: skip
    assert g.gene_names[6:9] == ["weight[math:rest]", "weight[code:rest]", "weight[lex:rest]"]
    assert g.gene_names[9:] == ["density[math]", "density[code]", "density[lex]"]
    both = Genome(FACTS, level="both", encoding="aligned", weight_parts=PARTS)
    assert both.n_param == 9 and both.dim == 9 + 2 * 4
    assert Genome(FACTS, level="arch", weight_parts=PARTS).n_param == 0


def test_parts_that_agree_decode_to_the_plain_merge() -> None:
    g = Genome(FACTS, level="param", weight_parts=PARTS)
    plain = Genome(FACTS, level="param")
    assert g.decode(g.identity()).hash == plain.decode(plain.identity()).hash
    assert g.decode(g.identity()).merge == uniform_merge("ties", EXPERTS, density=0.5)
    x = np.tile([0.1, 0.5, 0.4], 3)  # every part the same genes
    assert g.decode(x).hash == plain.decode(x[:3]).hash


def test_parts_that_differ_decode_to_filter_lists_on_the_lattice() -> None:
    g = Genome(FACTS, level="param", weight_parts=PARTS)
    # attention all math, MLP all code, the rest uniform
    x = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.3, 0.3, 0.3])
    r = g.decode(x)
    assert _weight(r, "math") == [{"filter": "self_attn", "value": 1.0},
                                  {"filter": "mlp", "value": 0.0}, {"value": pytest.approx(1 / 3)}]  # fmt: skip
    assert _weight(r, "code")[1]["value"] == 1.0 and _weight(r, "lex")[0]["value"] == 0.0
    # each part is snapped to the env's lattice (sixths) on its own
    y = g.decode(np.array([0.5, 0.3, 0.2, 0.2, 0.2, 0.6, 1.0, 1.0, 1.0]))
    for i, e in enumerate(EXPERTS):
        values = [entry["value"] for entry in _weight(y, e)]
        assert values == pytest.approx([[3 / 6, 2 / 6, 1 / 6][i], [1 / 6, 1 / 6, 4 / 6][i], 1 / 3])
    # the recipe is mergekit's schema: its canonical form parses back to the same hash
    again = Recipe.from_dict(r.to_dict())
    assert again.hash == r.hash and again.canonical_json() == r.canonical_json()


def test_encode_round_trips_per_part_and_plain_recipes() -> None:
    g = Genome(FACTS, level="param", weight_parts=PARTS)
    rng = np.random.default_rng(0)
    for x in g.sample(rng, 40):
        recipe = g.decode(x)
        y = g.encode(recipe)
        assert y is not None and g.decode(y).hash == recipe.hash
    plain = Genome(FACTS, level="param").decode(np.array([0.2, 0.5, 0.3]))
    y = g.encode(plain)  # a per-expert merge is the genome whose parts agree
    assert y is not None and g.decode(y).hash == plain.hash
    # a filter list of other parts, or per-part weights to a per-expert genome: not in the space
    other = {e: [{"filter": "mlp", "value": 0.5}, {"value": 0.5}] for e in EXPERTS}
    assert g.encode(Recipe(merge=param_merge("ties", other, density=0.5))) is None
    per_part = g.decode(np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.3, 0.3, 0.3]))
    assert Genome(FACTS, level="param").encode(per_part) is None


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        ("mlp", "a list of tensor-name filters"),
        (["mlp", "mlp"], "listed twice"),
        (["*"], "non-empty tensor-name filter"),
        (["rest"], "non-empty tensor-name filter"),
        ([""], "non-empty tensor-name filter"),
        ([3], "non-empty tensor-name filter"),
    ],
)
def test_bad_weight_parts_are_config_errors(parts, match: str) -> None:
    with pytest.raises(ConfigError, match=rf"genome\.weight_parts: .*{match}"):
        Genome(FACTS, weight_parts=parts)
    with pytest.raises(ConfigError, match=match):
        CMAESAgent(weight_parts=parts)  # fails at construction, not at the first search


def test_per_part_merge_is_each_parts_merge_tensor_for_tensor(tiny_zoo) -> None:
    """The engine gives the attention tensors the attention weights, the MLP tensors the MLP
    weights and every other tensor the rest's: each equals the plain merge at that part's weights."""
    g = Genome(PoolFacts(tuple(tiny_zoo.experts), 2), level="param", weight_parts=PARTS)
    K = len(tiny_zoo.experts)
    genes = np.concatenate([np.eye(K)[0], np.eye(K)[1 % K], np.full(K, 1.0)])
    merge = g.decode(genes).merge
    paths = {BASE: str(tiny_zoo.base), **{k: str(v) for k, v in tiny_zoo.experts.items()}}

    def engine(pm: ParamMerge) -> MergeEngine:
        data = pm.to_mergekit()
        data["base_model"] = paths[data["base_model"]]
        for m in data["models"]:
            m["model"] = paths[m["model"]]
        return MergeEngine(ParamMerge.from_mergekit(data))

    def plain(w: np.ndarray) -> MergeEngine:
        return engine(param_merge("ties", dict(zip(tiny_zoo.experts, w)), density=0.5))

    per_part = engine(merge)
    by_part = {"self_attn": plain(genes[:K]), "mlp": plain(genes[K : 2 * K]),
               "rest": plain(genes[2 * K :] / K)}  # fmt: skip
    names = Checkpoint(tiny_zoo.base).names
    seen = set()
    for name in names:
        part = next((p for p in PARTS if p in name), "rest")
        seen.add(part)
        torch.testing.assert_close(per_part.merged_tensor(name),
                                   by_part[part].merged_tensor(name), rtol=0, atol=0)  # fmt: skip
    assert seen == {"self_attn", "mlp", "rest"}
    # and the parts really differ here, so the check above could fail
    q = next(n for n in names if "self_attn" in n)
    assert not torch.equal(by_part["self_attn"].merged_tensor(q), by_part["mlp"].merged_tensor(q))


def test_cmaes_searches_per_part_weights(fresh_problem) -> None:
    problem = fresh_problem()
    agent = CMAESAgent(seed=0, level="param", weight_parts=PARTS, popsize=6, progress=False,
                       anchors=False, screening=False, proposals=0)  # fmt: skip
    agent.search(problem, 14)
    merges = [e.recipe["merge"] for e in problem.archive.entries if e.recipe.get("merge")]
    lists = [m for m in merges if isinstance(m["models"][0]["parameters"]["weight"], list)]
    assert lists, "no per-part merge was scored"
    for m in lists:
        assert [e.get("filter") for e in m["models"][0]["parameters"]["weight"]] == [
            "self_attn",
            "mlp",
            None,
        ]


def test_moead_searches_per_part_weights_with_layer_paths(fresh_problem) -> None:
    # both levels: the anchors and proposals (per-expert merges, layer paths) are encoded into
    # the per-part genome and the search goes on from them
    problem = fresh_problem()
    agent = MOEADAgent(seed=0, level="both", weight_parts=PARTS, n_partitions=2, progress=False)
    agent.search(problem, 16)
    recipes = [e.recipe for e in problem.archive.entries if e.recipe.get("merge")]
    per_part = [r for r in recipes
                if isinstance(r["merge"]["models"][0]["parameters"]["weight"], list)]  # fmt: skip
    assert per_part and any(r["path"] is not None for r in recipes)


def test_env_refuses_what_it_cannot_search_per_part(fresh_problem) -> None:
    problem = fresh_problem()
    for bad in (dict(weights="simplex"), dict(param_mode="preference"), dict(param_mode="fixed")):
        with pytest.raises(ConfigError, match=r"env\.weight_parts=.*need env\.weights=lattice"):
            MergeEnv(problem, weight_parts=PARTS, **bad)
    with pytest.raises(ConfigError, match=r"genome\.weight_parts|env\.weight_parts"):
        MergeEnv(problem, weight_parts="mlp")
    with pytest.raises(ConfigError, match="'self_atn' takes no tensor of the pool"):
        MergeEnv(problem, weight_parts=["self_atn"])
    with pytest.raises(ConfigError, match="'self_atn' takes no tensor of the pool"):
        PPOAgent(weight_parts=["self_atn"], progress=False).search(problem, 4)
    assert len(problem.archive) == 0
    with pytest.raises(ConfigError, match=r"agent\.weight_parts"):
        PPOAgent(weight_parts=["mlp", "mlp"])
    # where no merge weight is searched the parts change nothing, as in the genome's codec
    assert PPOAgent(level="arch", weight_parts=PARTS).env_kwargs["weight_parts"] == ()
    assert Genome(FACTS, level="arch", weight_parts=PARTS).n_param == 0


@pytest.mark.parametrize("mode", ["free", "aligned"])
def test_env_picks_a_lattice_point_per_part(fresh_problem, mode) -> None:
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    problem = fresh_problem()
    env = MergeEnv(problem, mode=mode, weight_parts=PARTS)
    n = len(env.merges)
    assert env.merge_dims == 3 and list(env.action_space.nvec[:3]) == [n, n, n]
    gym_check_env(MergeEnv(problem, mode=mode, weight_parts=PARTS), skip_render_check=True)
    sb3_check_env(MergeEnv(problem, mode=mode, weight_parts=PARTS), warn=True)

    obs, _ = env.reset(seed=0)
    assert obs["merge"].tolist() == [n, n, n]  # not chosen yet
    choice = (0, n - 1, 5)
    action = env.encode_action(choice, len(env.sources), 0, 0) if mode == "free" else None
    if mode == "free":  # STOP at once: the per-part parameter merge alone
        # (level="param" wraps the env in StopAtOnce, which sets STOP after the merge parts)
        assert (
            env.with_stop(env.encode_action(choice, 0, 1, 2)) == action + [0, 0, 0, 0, 1, 2]
        ).all()
        _, _, done, _, info = env.step(action)
        assert done
        recipe = info["recipe"]
    else:
        obs, _, _, _, _ = env.step(env.encode_action(choice, 0, 0, 0))
        assert obs["merge"].tolist() == list(choice)
        recipe = env.recipe()
    # the same merge the genome agents decode from these weights: one space for every agent
    w = np.array([env._lattice_w[i] for i in choice])
    genome = Genome(problem, level="param", weight_parts=PARTS)
    assert recipe.merge == genome.decode(w.reshape(-1)).merge
    filters = [e.get("filter") for e in _weight(recipe, recipe.merge.models[0].model)]
    assert filters == ["self_attn", "mlp", None]
    # parts that agree are the plain lattice merge, with its hash
    assert Recipe(merge=env.merge_of((4, 4, 4))).hash == Recipe(merge=env.merges[4]).hash


def test_env_choice_codec_round_trips(fresh_problem) -> None:
    problem = fresh_problem()
    env = MergeEnv(problem, weight_parts=PARTS)
    rng = np.random.default_rng(0)
    for _ in range(20):
        choice = tuple(int(x) for x in rng.integers(len(env.merges), size=3))
        assert env.choice_of(env.merge_of(choice)) == choice
    assert env.choice_of(env.merges[7]) == (7, 7, 7)
    off = param_merge("ties", {e: 0.3 for e in problem.pool.experts}, density=0.5)
    assert env.choice_of(off) is None  # off the lattice
    plain = MergeEnv(problem)
    assert plain.choice_of(plain.merges[7]) == 7
    assert plain.choice_of(env.merge_of((0, 1, 2))) is None  # per-part: not in a plain env


def test_ppo_searches_per_part_weights_and_imitates_them(fresh_problem) -> None:
    from agents.ppo.agent import _as_candidate
    from tests.agents.test_ppo import FAST

    problem = fresh_problem()
    agent = PPOAgent(seed=0, weight_parts=PARTS, progress=False, **FAST)
    agent.search(problem, 14)
    assert 14 - 1 < problem.spent <= 14 + 1e-9
    per_part = [e for e in problem.archive.entries if e.recipe.get("merge")
                and isinstance(e.recipe["merge"]["models"][0]["parameters"]["weight"], list)]  # fmt: skip
    assert per_part, "the policy scored no per-part merge"
    assert {e.source for e in per_part} <= {"env"}
    # self-imitation reads them back as actions the env replays to the same recipe
    scratch = agent.make_env(problem).unwrapped
    for e in per_part:
        cand = _as_candidate(scratch, e.recipe)
        assert cand is not None and isinstance(cand.merge, tuple)
        assert cand.recipe(scratch).hash == e.recipe_hash


def test_a_part_that_takes_no_tensor_is_named_before_any_score(fresh_problem, tiny_zoo) -> None:
    base = Checkpoint(tiny_zoo.base)
    check_parts_cover(["self_attn", "mlp"], base)
    # a part is what the merge engine resolves: an arch part's name counts as a filter too
    assert not any("final_norm" in n for n in base.names)
    check_parts_cover(["final_norm", "embed"], base)
    with pytest.raises(ConfigError, match=r"'self_atn' takes no tensor.*no tensor name contains"):
        check_parts_cover(["self_atn", "mlp"], base)
    with pytest.raises(ConfigError, match=r"'mlp' .*taken by an earlier part"):
        check_parts_cover(["layers", "mlp"], base)
    problem = fresh_problem()
    agent = CMAESAgent(seed=0, level="param", weight_parts=["self_atn"], progress=False)
    with pytest.raises(ConfigError, match="'self_atn' takes no tensor of the pool"):
        agent.search(problem, 4)
    assert len(problem.archive) == 0
