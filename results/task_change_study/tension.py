"""Do the regime target and the main-job target meet on one zoo? Post hoc, on runs already read.

    python results/task_change_study/tension.py

Session 35, not declared: it reads only figures sessions 32-34 already reported. For each of this
host's 12 zoos with main-job runs (A and v5, training seeds 0-5; search seeds 100-102, the seeds
both designs ran), it puts the regime's statistic (the best judged plain merge's worst share, TEST,
``table.py``'s parse) beside the main job's mean margin over the references (front test
hypervolume / the references' - 1, ``main_job.py``'s), and counts the zoos that meet both of the
issue's targets: the regime holds, and every search seed's front beats the references by >= 20 %.
Then a least-squares line of the margin on the worst share over the 12 zoos (slope with a 95 %
interval), the worst share where that line crosses +20 %, and the same for the references'
hypervolume, the quantity through which the regime enters the margin.
"""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
SEEDS, SEARCH = range(6), (100, 101, 102)


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def line(x: list[float], y: list[float], label: str, target: float = 20.0) -> None:
    fit = stats.linregress(x, y)
    half = stats.t.ppf(0.975, len(x) - 2) * fit.stderr
    cross = (target - fit.intercept) / fit.slope
    print(f"margin over the references on {label}: {fit.intercept:+.1f} + slope {fit.slope:+.1f} points a unit "
          f"[{fit.slope - half:+.1f}, {fit.slope + half:+.1f}], r {fit.rvalue:+.2f}; "
          f"the line crosses +{target:.0f} % at {label} {cross:.3f}")  # fmt: skip


def main() -> None:
    table, main_job = _load(HERE / "table.py"), _load(HERE / "main_job.py")
    regime = table.load(table.DESIGNS, list(SEEDS))
    jobs = {"A": main_job.runs(HERE / "main_job_A.json"), "v5": main_job.runs(main_job.V5)}
    print("| design | zoo seed | worst share | regime | references' test HV | margin over the "
          "references per search seed | mean | both targets |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    xs, ys, refs = [], [], []
    both = {}
    for rs, design in zip(regime.values(), ("v5", "A"), strict=True):
        both[design] = 0
        for z in SEEDS:
            r = rs[z]
            m = [main_job.margins(jobs[design][(z, s)])[0] for s in SEARCH]
            ok = r["holds"] and min(m) >= 20
            both[design] += ok
            ref = jobs[design][(z, SEARCH[0])]["rt"]
            xs.append(r["worst"])
            ys.append(statistics.mean(m))
            refs.append(ref)
            print(f"| {design} | {z} | {r['worst']:.2f} | {'holds' if r['holds'] else 'no'} | "
                  f"{ref:.4f} | " + " / ".join(f"{v:+.1f}" for v in m)
                  + f" | {ys[-1]:+.1f} % | {'yes' if ok else 'no'} |")  # fmt: skip
    print()
    for design, n in both.items():
        print(f"{design}: both targets on {n} of {len(SEEDS)} zoos")
    line(xs, ys, "the worst share")
    line(refs, ys, "the references' test HV")
    rho = stats.spearmanr(xs, refs)
    print(
        f"worst share against the references' test HV: Spearman {rho.statistic:+.2f} "
        f"(p {rho.pvalue:.3f}), {len(xs)} zoos; worst share mean {np.mean(xs):.3f}"
    )


if __name__ == "__main__":
    main()
