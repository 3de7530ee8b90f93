"""How much of each expert's task vector is the base simply trained on: the session-18 diagnostic.

    python results/converged_base_study/shared_drift.py ZOO_DIR OUT_DIR

Trains the zoo's base further on its own pretraining mixture alone (the experts' replay stream
at their learning rate and step count, no task data), then prints, body and embeddings apart,
the size of that continuation's drift R against the base, each expert's cosine with it, and the
TEST exact match of the base, the continuation and the experts; last, task arithmetic of the
experts from the base and from the continuation (λ chosen on the SEARCH split, as the builder
does), with the share of each gain kept. The continuation is written to OUT_DIR once and reused.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlamaForCausalLM

from merge_env.pools.zoo import _Trainer, load_zoo
from merge_env.scoring.evaluate import Evaluator


def main() -> None:
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    zoo = load_zoo(root)
    cfg = zoo.config
    base = load_file(str(zoo.base / "model.safetensors"))
    experts = {t: load_file(str(p / "model.safetensors")) for t, p in zoo.experts.items()}
    path = out / "replay.safetensors"
    if not path.exists():
        run = _Trainer(cfg, cfg.expert_steps[0], False, "cpu")
        pretraining = run.rows("pretrain", cfg.per_task("base_rare_mass"))
        model = run.model(cfg.shape, "init")
        model.load_state_dict(base)
        start = time.time()
        lr = cfg.per_task("expert_lr")[0]
        run.fit(model, pretraining, cfg.base_mix, cfg.expert_steps[0], lr, "expert:add")
        print(f"continuation on the base's own mixture: {time.time() - start:.1f} s")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    replay = load_file(str(path))

    def flat(state: dict, body: bool) -> torch.Tensor:
        names = [k for k in base if ("embed" in k or "lm_head" in k) != body]
        return torch.cat([state[k].double().flatten() for k in names])

    for body in (True, False):
        origin = flat(base, body)
        drift = flat(replay, body) - origin
        line = [f"{'body' if body else 'embeddings'}: |R| {drift.norm() / origin.norm():.3f}"]
        for task, state in experts.items():
            tau = flat(state, body) - origin
            cos = float(tau @ drift / (tau.norm() * drift.norm()))
            line.append(f"{task}: |tau| {tau.norm() / origin.norm():.3f}, cos(tau, R) {cos:.2f}")
        print(" | ".join(line), "(sizes against the base's norm)")

    evaluator = Evaluator(AutoTokenizer.from_pretrained(zoo.tokenizer_dir), device="cpu")
    model = LlamaForCausalLM.from_pretrained(zoo.base).eval()

    def score(state: dict, split: str) -> dict[str, float]:
        model.load_state_dict(state)
        return {t: s.exact_match for t, s in evaluator.score_tasks(model, zoo.tasks, split).items()}

    def arithmetic(anchor: dict, lam: float) -> dict:
        return {
            k: (anchor[k].double() + lam * sum(e[k].double() - anchor[k].double()
                                               for e in experts.values())).float()
            for k in base
        }  # fmt: skip

    at_base, at_replay = score(base, "test"), score(replay, "test")
    own = {t: score(state, "test")[t] for t, state in experts.items()}
    print("TEST exact match, base:", fmt(at_base), "| continuation:", fmt(at_replay),
          "| each expert on its task:", fmt(own))  # fmt: skip
    for name, anchor in (("from the base", base), ("from the continuation", replay)):
        grid = np.round(np.arange(0.1, 1.01, 0.1), 2)
        curve = {float(lam): float(np.mean(list(score(arithmetic(anchor, lam), "search").values())))
                 for lam in grid}  # fmt: skip
        lam = max(curve, key=curve.__getitem__)
        test = score(arithmetic(anchor, lam), "test")
        shares = {t: (test[t] - at_base[t]) / (own[t] - at_base[t]) for t in experts}
        print(
            f"task arithmetic {name}, λ {lam} (search): TEST {fmt(test)}; shares of the "
            f"experts' gains over the base {fmt(shares)}, worst {min(shares.values()):.2f}"
        )


def fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in values.items())


if __name__ == "__main__":
    main()
