"""Merge operators against direct re-computations, parameter forms, and error messages."""

from __future__ import annotations

import math

import pytest
import torch

from merge_env.errors import MergeError, RecipeError
from merge_env.merging.methods.params import resolve_value, validate_params
from merge_env.merging.methods.registry import OPERATORS, get_operator, merge_tensors

ALL = ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "breadcrumbs",
       "breadcrumbs_ties"]  # fmt: skip


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _models(shape=(32, 24), n=3, seed=0, scale=0.1):
    """A base and ``n`` fine-tunes of it: base plus seeded noise (distinct magnitudes)."""
    g = _gen(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + scale * torch.randn(shape, generator=g) for _ in range(n)]


def _merge(method, tensors, base, model_params, global_params=None, **kw):
    if OPERATORS[method].stochastic and "generator" not in kw:
        kw["generator"] = _gen(123)
    return merge_tensors(method, tensors, base, model_params, global_params or {}, **kw)


def _close(a, b, tol=1e-5):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item() <= tol


# ---------------------------------------------------------------- independent references


def _ref_top_k(delta, density):
    """Top-``density`` magnitudes via a full sort (inputs have distinct magnitudes)."""
    k = max(1, int(density * delta.numel()))
    cut = delta.abs().flatten().sort(descending=True).values[k - 1]
    return delta * (delta.abs() >= cut)


def _ref_window(delta, density, gamma):
    """Breadcrumbs: drop the ``gamma`` largest, then the smallest down to ``density``."""
    n = delta.numel()
    target = int(density * n)
    bottom = max(0, n - target - int(gamma * n))
    ranks = delta.abs().flatten().argsort().argsort().view_as(delta)
    return delta * ((ranks >= bottom) & (ranks < bottom + target))


def _ref_gta(base, tensors, weights, trim=None, elect=False, normalize=False, lam=1.0):
    """Generalised task arithmetic written out plainly, in float64."""
    base = base.double()
    deltas = [t.double() - base for t in tensors]
    if trim is not None:
        deltas = [trim(d) for d in deltas]
    weighted = [w * d for w, d in zip(weights, deltas)]
    if elect:
        sign = torch.sign(sum(weighted))
        sign[sign == 0] = 1
        agree = [torch.sign(x) == sign for x in weighted]
        mixed = sum(x * a for x, a in zip(weighted, agree))
        divisor = sum(w * a.double() for w, a in zip(weights, agree))
        divisor[divisor == 0] = 1
    else:
        mixed, divisor = sum(weighted), sum(weights)
        divisor = divisor if abs(divisor) >= 1e-8 else 1.0
    if normalize:
        mixed = mixed / divisor
    return base + lam * mixed


# ---------------------------------------------------------------- registry and defaults


def test_registry_has_every_method_with_mergekit_defaults():
    assert set(ALL) <= set(OPERATORS)
    defaults = {name: {p.name: p.default for p in OPERATORS[name].params} for name in ALL}
    assert defaults["ties"]["normalize"] is True and defaults["ties"]["rescale"] is False
    for name in ("task_arithmetic", "dare_linear", "dare_ties", "breadcrumbs"):
        assert defaults[name]["normalize"] is False
    assert defaults["dare_ties"]["rescale"] is True and defaults["dare_linear"]["rescale"] is True
    assert defaults["breadcrumbs"]["gamma"] == 0.01 and defaults["ties"]["density"] == 1.0
    assert defaults["ties"]["lambda"] == 1.0 and defaults["linear"]["normalize"] is True
    assert OPERATORS["slerp"].param("t").required and OPERATORS["ties"].param("weight").required
    assert not OPERATORS["linear"].needs_base and OPERATORS["ties"].needs_base
    assert all(OPERATORS[n].reference_url.startswith("https://") for n in ALL)


def test_unknown_method_lists_known_ones():
    with pytest.raises(MergeError, match="unknown merge method 'tiez'.*breadcrumbs.*ties"):
        get_operator("tiez")
    with pytest.raises(MergeError, match="tiez"):
        merge_tensors("tiez", [torch.ones(2)], torch.ones(2), [{"weight": 1.0}], {})


# ---------------------------------------------------------------- linear and task arithmetic


def test_linear_of_identical_tensors_is_the_tensor():
    x = torch.randn(7, 5, generator=_gen())
    out = _merge("linear", [x, x.clone(), x.clone()], None, [{"weight": w} for w in (0.2, 3, 1)])
    assert torch.allclose(out, x, rtol=1e-6, atol=1e-7)


def test_linear_matches_weighted_sum():
    _, ts = _models(n=3)
    w = [0.5, 0.3, 0.7]
    out = _merge("linear", ts, None, [{"weight": x} for x in w])
    assert _close(out, sum(a * t.double() for a, t in zip(w, ts)) / sum(w))
    raw = _merge("linear", ts, None, [{"weight": x} for x in w], {"normalize": False})
    assert _close(raw, sum(a * t.double() for a, t in zip(w, ts)))


def test_task_arithmetic_matches_reference():
    base, ts = _models(n=3)
    w = [0.5, 0.3, -0.2]
    out = _merge("task_arithmetic", ts, base, [{"weight": x} for x in w], {"lambda": 0.7})
    assert _close(out, _ref_gta(base, ts, w, lam=0.7))
    norm = _merge("task_arithmetic", ts, base, [{"weight": x} for x in w], {"normalize": True})
    assert _close(norm, _ref_gta(base, ts, w, normalize=True))


# ---------------------------------------------------------------- TIES


def test_ties_sign_election_on_hand_made_deltas():
    base = torch.zeros(5)
    a = torch.tensor([1.0, -2.0, 3.0, 0.0, 1.0])
    b = torch.tensor([-3.0, 1.0, 1.0, 0.0, -1.0])
    out = _merge("ties", [a, b], base, [{"weight": 1.0}, {"weight": 1.0}])
    # sums: -2 (-), -1 (-), 4 (+), 0 (+, nothing agrees), 0 (+: only a's +1 counts)
    assert out.tolist() == [-3.0, -2.0, 2.0, 0.0, 1.0]
    raw = _merge("ties", [a, b], base, [{"weight": 1.0}, {"weight": 1.0}], {"normalize": False})
    assert raw.tolist() == [-3.0, -2.0, 4.0, 0.0, 1.0]


def test_ties_weights_count_in_election_and_disjoint_mean():
    base = torch.zeros(2)
    a, b = torch.tensor([1.0, 1.0]), torch.tensor([-1.0, -1.0])
    out = _merge("ties", [a, b], base, [{"weight": 3.0}, {"weight": 1.0}])
    assert out.tolist() == [1.0, 1.0]  # sign of 3·1 − 1·1 is +; mean over the agreeing weight 3


def test_ties_trims_by_magnitude():
    base = torch.zeros(6)
    a = torch.tensor([0.1, -5.0, 0.3, 4.0, -0.2, 2.0])
    out = _merge("ties", [a], base, [{"weight": 1.0, "density": 0.5}])
    assert out.tolist() == [0.0, -5.0, 0.0, 4.0, 0.0, 2.0]


@pytest.mark.parametrize("shape", [(32, 24), (300, 300)])  # the larger one trims in threads
def test_ties_matches_reference(shape):
    base, ts = _models(shape, n=3)
    w, d = [1.0, 0.6, 0.3], [0.2, 0.5, 0.9]
    params = [{"weight": x, "density": y} for x, y in zip(w, d)]
    out = _merge("ties", ts, base, params)
    deltas = iter(d)
    ref = _ref_gta(base, ts, w, trim=lambda x: _ref_top_k(x, next(deltas)), elect=True,
                   normalize=True)  # fmt: skip
    assert _close(out, ref)


def test_ties_position_ties_mode_on_equal_magnitudes():
    base = torch.zeros(6)
    a = torch.tensor([1.0, -1.0, 1.0, -1.0, 3.0, 0.5])
    out = _merge("ties", [a], base, [{"weight": 1.0, "density": 0.5}], exact_ties=False)
    assert out.tolist() == [1.0, -1.0, 0.0, 0.0, 3.0, 0.0]  # equal |x|: lower positions first
    exact = _merge("ties", [a], base, [{"weight": 1.0, "density": 0.5}])
    assert exact[4] == 3.0 and int((exact != 0).sum()) == 3  # mergekit's sort picks some two
    flat = torch.tensor([2.0, -2.0] * 5)  # all equal: both breadcrumbs cuts split one group
    crumbs = [{"weight": 1.0, "density": 0.5, "gamma": 0.2}]
    out = _merge("breadcrumbs", [flat], torch.zeros(10), crumbs, exact_ties=False)
    assert (out != 0).nonzero().view(-1).tolist() == [3, 4, 5, 6, 7]


def _mergekit_style_trim(delta, density):
    """mergekit 0.1.5's magnitude(): its full argsort picks which equal magnitudes survive."""
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel())
    mask[torch.argsort(delta.abs().flatten().float(), descending=True)[:k]] = 1
    return delta * mask.view_as(delta)


@pytest.mark.parametrize(
    "shape,decimals", [((300, 300), 2), ((40, 30), 2), ((300, 300), None)]
)  # heavily tied deltas (found before and after selection), and tie-free ones
def test_exact_ties_reproduce_mergekit_sort(shape, decimals):
    base, ts = _models(shape, n=2, seed=4)
    if decimals is not None:
        ts = [base + torch.round(t - base, decimals=decimals) for t in ts]
    params = [{"weight": 1.0, "density": 0.3}, {"weight": 0.5, "density": 0.6}]
    out = _merge("ties", ts, base, params, {"normalize": False})
    deltas = [_mergekit_style_trim(t - base, p["density"]) for t, p in zip(ts, params)]
    weighted = torch.stack([p["weight"] * d for p, d in zip(params, deltas)])
    agree = torch.where(weighted.sum(0) >= 0, weighted > 0, weighted < 0)
    assert torch.equal(out, base + (weighted * agree).sum(0))


def test_position_ties_mode_equals_exact_without_ties():
    base, ts = _models((40, 30), n=2)
    for method, extra in [("ties", {}), ("breadcrumbs", {"gamma": 0.1})]:
        params = [{"weight": 0.5, "density": 0.4, **extra}] * 2
        fast = _merge(method, ts, base, params, exact_ties=False)
        assert torch.equal(fast, _merge(method, ts, base, params))


# ---------------------------------------------------------------- DARE


def test_dare_same_seed_same_tensor():
    base, ts = _models(n=2)
    params = [{"weight": 0.5, "density": 0.3}] * 2
    for method in ("dare_linear", "dare_ties"):
        a = _merge(method, ts, base, params, generator=_gen(7))
        b = _merge(method, ts, base, params, generator=_gen(7))
        c = _merge(method, ts, base, params, generator=_gen(8))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_dare_needs_a_generator():
    base, ts = _models(n=1)
    with pytest.raises(MergeError, match="needs a torch.Generator"):
        merge_tensors("dare_ties", ts, base, [{"weight": 1.0, "density": 0.5}], {})


def test_dare_rescaling_expectation_over_seeds():
    base, (ft,) = _models((20, 20), n=1, seed=3)
    delta = (ft - base).double()
    kept, mean, mean_raw = 0.0, torch.zeros_like(delta), torch.zeros_like(delta)
    runs = 400
    for seed in range(runs):
        out = _merge(
            "dare_linear", [ft], base, [{"weight": 1.0, "density": 0.4}], generator=_gen(seed)
        )
        raw = _merge("dare_linear", [ft], base, [{"weight": 1.0, "density": 0.4}],
                     {"rescale": False}, generator=_gen(seed))  # fmt: skip
        d = out.double() - base.double()
        kept += (d != 0).double().mean().item() / runs
        mean += d / runs
        mean_raw += (raw.double() - base.double()) / runs
        # the rescale restores the L1 norm of the delta exactly
        assert (
            abs(d.abs().sum().item() - delta.abs().sum().item()) < 1e-4 * delta.abs().sum().item()
        )
    assert abs(kept - 0.4) < 0.01
    assert ((mean - delta).norm() / delta.norm()).item() < 0.1  # unbiased: E[out] = delta
    assert ((mean_raw - 0.4 * delta).norm() / (0.4 * delta).norm()).item() < 0.1


def test_dare_ties_full_density_is_ties():
    base, ts = _models(n=2)
    params = [{"weight": 0.7}, {"weight": 0.4}]
    dare = _merge("dare_ties", ts, base, params, {"normalize": True})
    assert torch.equal(dare, _merge("ties", ts, base, params))


# ---------------------------------------------------------------- breadcrumbs


def test_breadcrumbs_mask_drops_outliers_and_small():
    base = torch.zeros(10)
    a = torch.arange(1.0, 11.0) * torch.tensor([1.0, -1.0] * 5)
    out = _merge("breadcrumbs", [a], base, [{"weight": 1.0, "density": 0.5, "gamma": 0.2}])
    assert (out != 0).nonzero().view(-1).tolist() == [3, 4, 5, 6, 7]  # |x| 4..8 of 1..10
    # density + gamma > 1: fewer outliers are dropped so that `density` is kept
    out = _merge("breadcrumbs", [a], base, [{"weight": 1.0, "density": 0.9, "gamma": 0.2}])
    assert (out != 0).nonzero().view(-1).tolist() == list(range(9))
    full = _merge("breadcrumbs", [a], base, [{"weight": 1.0, "gamma": 0.2}])
    assert torch.equal(full, a)  # density 1 keeps everything, outliers included (mergekit)


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
def test_breadcrumbs_matches_reference(method):
    base, ts = _models((30, 20), n=3, seed=5)
    w, d, g = [0.8, 0.5, 0.4], [0.7, 0.5, 0.9], [0.05, 0.1, 0.02]
    params = [{"weight": a, "density": b, "gamma": c} for a, b, c in zip(w, d, g)]
    out = _merge(method, ts, base, params, {"normalize": True})
    trims = iter(zip(d, g))
    ref = _ref_gta(base, ts, w, trim=lambda x: _ref_window(x, *next(trims)),
                   elect=method.endswith("ties"), normalize=True)  # fmt: skip
    assert _close(out, ref)


# ---------------------------------------------------------------- slerp


def test_slerp_endpoints_and_orthogonal_norm():
    base, (other,) = _models(n=1)
    assert torch.equal(_merge("slerp", [other], base, [{}], {"t": 0.0}), base)
    assert _close(_merge("slerp", [other], base, [{}], {"t": 1.0}), other, 1e-6)
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    for t in (0.25, 0.5, 0.8):
        mid = _merge("slerp", [b], a, [{}], {"t": t})
        assert abs(mid.norm().item() - 1.0) < 1e-6
        angle = math.pi / 2 * t
        assert torch.allclose(mid, torch.tensor([math.cos(angle), math.sin(angle), 0.0]))


def test_slerp_matches_formula_and_lerps_colinear():
    base, (other,) = _models(n=1, scale=1.0)
    a, b = base.double().flatten(), other.double().flatten()
    theta = torch.acos((a @ b) / (a.norm() * b.norm()))
    t = 0.3
    ref = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    assert _close(_merge("slerp", [other], base, [{}], {"t": t}), ref.view_as(base))
    out = _merge("slerp", [2 * base], base, [{}], {"t": t})
    assert _close(out, 0.7 * base + 0.3 * 2 * base)


def test_slerp_takes_exactly_one_other_model():
    base, ts = _models(n=2)
    with pytest.raises(MergeError, match="slerp"):
        _merge("slerp", ts, base, [{}, {}], {"t": 0.5})


# ---------------------------------------------------------------- dtypes and purity


def test_output_dtype_and_compute_dtype():
    base, ts = _models(n=2)
    base16, ts16 = base.bfloat16(), [t.bfloat16() for t in ts]
    params = [{"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": 0.5}]
    for method in ALL:
        p = [{}] if method == "slerp" else params[:1] if method == "linear" else params
        n = len(p)
        out = _merge(method, ts16[:n], base16, p, {"t": 0.5} if method == "slerp" else {})
        assert out.dtype == torch.bfloat16, method
    # compute_dtype=None: task arithmetic family in the inputs' dtype, as mergekit
    native = _merge("task_arithmetic", ts16, base16, params, compute_dtype=None)
    w = torch.tensor([0.6, 0.4], dtype=torch.bfloat16)  # mergekit rounds weights to it too
    by_hand = base16 + (w[0] * (ts16[0] - base16) + w[1] * (ts16[1] - base16))
    assert torch.equal(native, by_hand)


@pytest.mark.parametrize("method", ALL)
def test_inputs_are_not_modified(method):
    base, ts = _models(n=1 if method == "slerp" else 2)
    copies = [base.clone(), *[t.clone() for t in ts]]
    params = [{} if method == "slerp" else {"weight": 0.5, "density": 0.5}] * len(ts)
    if method == "linear":
        params = [{"weight": 0.5}] * len(ts)
    _merge(method, ts, base, params, {"t": 0.4} if method == "slerp" else {})
    assert all(torch.equal(a, b) for a, b in zip([base, *ts], copies))


# ---------------------------------------------------------------- errors name the tensor


def test_shape_mismatch_names_tensor_and_model():
    base = torch.zeros(4, 3)
    ts = [torch.zeros(4, 3), torch.zeros(4, 2)]
    with pytest.raises(MergeError, match=r"'model.layers.0.mlp.up_proj.weight'.*model 1.*\(4, 2\)"):
        _merge("ties", ts, base, [{"weight": 1.0}] * 2, name="model.layers.0.mlp.up_proj.weight")


def test_non_finite_result_names_tensor():
    base, ts = _models(n=2)
    ts[1][3, 4] = float("nan")
    for method in ("ties", "task_arithmetic", "linear", "dare_ties", "breadcrumbs"):
        params = (
            [{"weight": 0.5, "density": 0.5}] * 2 if method != "linear" else [{"weight": 1}] * 2
        )
        with pytest.raises(MergeError, match="'lm_head.weight'.*non-finite"):
            _merge(method, ts, base, params, name="lm_head.weight")
    _, ok = _models(n=2)
    with pytest.raises(MergeError, match="'embed'.*non-finite"):
        _merge("linear", ok, None, [{"weight": 1.0}, {"weight": -1.0}], name="embed")


def test_missing_base_is_an_error():
    _, ts = _models(n=1)
    with pytest.raises(MergeError, match="'w'.*needs a base"):
        _merge("ties", ts, None, [{"weight": 1.0}], name="w")


# ---------------------------------------------------------------- parameter forms


def test_resolve_scalar_and_gradient():
    assert resolve_value(0.3, "x", 2, 5, "mlp") == 0.3
    assert resolve_value("1e-3", "x", None, 5, "other") == 0.001
    name = "model.layers.1.mlp.up_proj.weight"
    assert resolve_value([0.0, 1.0], name, 1, 3, "mlp") == pytest.approx(0.5)
    assert resolve_value([0.0, 1.0, 0.5], name, 3, 5, "mlp") == pytest.approx(0.75)  # t=0.75
    assert resolve_value([0.2, 1.0], name, 4, 5, "mlp") == pytest.approx(1.0)
    # outside the decoder layers mergekit uses t = 0; a one-layer model uses t = 1
    assert resolve_value([0.2, 1.0], "lm_head.weight", None, 5, "head") == pytest.approx(0.2)
    assert resolve_value([0.2, 1.0], name, 0, 1, "mlp") == pytest.approx(1.0)
    # booleans are picked, never blended: index int(t * (len - 1))
    assert resolve_value([True, False], name, 3, 5, "mlp") == 1.0
    assert resolve_value([True, False], name, 4, 5, "mlp") == 0.0


def test_resolve_filters_take_the_first_match():
    setting = [
        {"filter": "self_attn", "value": [0.0, 1.0]},
        {"filter": "mlp", "value": 0.7},
        {"value": 0.5},
    ]
    attn = "model.layers.2.self_attn.q_proj.weight"
    assert resolve_value(setting, attn, 2, 5, "attn") == pytest.approx(0.5)  # gradient at t=.5
    assert resolve_value(setting, "model.layers.2.mlp.down_proj.weight", 2, 5, "mlp") == 0.7
    assert resolve_value(setting, "model.norm.weight", None, 5, "final_norm") == 0.5
    by_part = [{"filter": "embed", "value": 0.1}, {"value": 0.9}]
    assert resolve_value(by_part, "transformer.wte.weight", None, 2, "embed") == 0.1
    with pytest.raises(RecipeError, match="'model.norm.weight'.*no filter entry matches"):
        resolve_value([{"filter": "mlp", "value": 1.0}], "model.norm.weight", None, 2, "norm")
    with pytest.raises(RecipeError, match="not a number"):
        resolve_value("lots", "w", None, 2, "other")


def test_validate_params_accepts_mergekit_forms():
    ties = get_operator("ties")
    validate_params(ties, {"density": 0.5, "normalize": True, "int8_mask": True},
                    [{"weight": [0.1, 0.5]}, {"weight": [{"filter": "mlp", "value": 1}, {"value": 0.3}]}],
                    "recipe.yaml")  # fmt: skip
    validate_params(ties, {"weight": 0.5}, [{}, {}], "recipe.yaml")  # global per-model default
    validate_params(get_operator("slerp"), {"t": [0, 0.5, 1]}, [{}], "recipe.yaml")


def test_validate_params_errors_name_key_and_place():
    ties = get_operator("ties")
    with pytest.raises(RecipeError, match=r"recipe.yaml: unknown parameter 'densty'"):
        validate_params(ties, {"densty": 0.5}, [{"weight": 1}], "recipe.yaml")
    with pytest.raises(RecipeError, match=r"recipe.yaml: model 1: unknown parameter 'wieght'"):
        validate_params(ties, {}, [{"weight": 1}, {"wieght": 1}], "recipe.yaml")
    with pytest.raises(RecipeError, match=r"recipe.yaml: model 0: .*needs the parameter 'weight'"):
        validate_params(ties, {}, [{"density": 0.4}], "recipe.yaml")
    with pytest.raises(RecipeError, match=r"recipe.yaml: slerp needs the parameter 't'"):
        validate_params(get_operator("slerp"), {}, [{}], "recipe.yaml")
    with pytest.raises(RecipeError, match=r"model 0: 'normalize' is a global parameter"):
        validate_params(ties, {}, [{"weight": 1, "normalize": True}], "recipe.yaml")
    with pytest.raises(RecipeError, match=r"'density'.*'half' is not a number"):
        validate_params(ties, {"density": "half"}, [{"weight": 1}], "recipe.yaml")
    with pytest.raises(RecipeError, match="at most 1 non-base"):
        validate_params(get_operator("slerp"), {"t": 0.5}, [{}, {}], "recipe.yaml")


def test_merge_tensors_fills_defaults_and_global_per_model_values():
    base, ts = _models(n=2)
    glob = _merge("ties", ts, base, [{"weight": 1.0}, {"weight": 0.5}], {"density": 0.3})
    each = _merge(
        "ties", ts, base, [{"weight": 1.0, "density": 0.3}, {"weight": 0.5, "density": 0.3}]
    )
    assert torch.equal(glob, each)
    with pytest.raises(RecipeError, match="'w'.*model 1 lacks parameter 'weight'"):
        _merge("ties", ts, base, [{"weight": 1.0}, {}], name="w")


@pytest.mark.parametrize("method", ["ties", "task_arithmetic", "dare_ties", "breadcrumbs_ties"])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_mix_equals_whole_tensor_bit_for_bit(method, chunk):
    """The election and mean over chunks of entries give exactly what one chunk gives, with
    equal magnitudes on the trim's cut, a zero task vector, opposite deltas and a NaN-free tail."""
    from merge_env.merging.methods import task_arithmetic as ta

    base, ts = _models((61, 37), n=4, seed=9)
    ts[1] = base.clone()  # a zero task vector
    ts[2] = base + torch.round(ts[2] - base, decimals=1)  # many equal magnitudes
    ts[3] = base - (ts[2] - base)  # opposite of another: sign totals of exactly zero
    params = [{"weight": w, "density": 0.5, "gamma": 0.05} for w in (1.0, 0.7, 0.4, 0.4)]
    fn = ta.OPERATORS[[op.name for op in ta.OPERATORS].index(method)].fn
    spec = {
        "ties": (ta.trim_magnitude, True),
        "task_arithmetic": (None, False),
        "dare_ties": (ta.drop_random, True),
        "breadcrumbs_ties": (ta.trim_outliers, True),
    }
    sparsify, elect = spec[method]
    glob = {"rescale": method == "dare_ties", "normalize": method == "ties", "lambda": 0.9}

    def run(c):
        return ta._task_arithmetic(base, ts, params, glob, _gen(5), None, True,
                                   sparsify=sparsify, elect_sign=elect, chunk=c)  # fmt: skip

    whole = run(base.numel())
    assert torch.equal(run(chunk), whole)
    assert torch.equal(fn(base, ts, params, glob, _gen(5)), whole)  # the default chunking
