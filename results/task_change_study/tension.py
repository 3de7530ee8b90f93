"""Do the regime target and the main-job target meet on one zoo? Post hoc, then out of sample.

    python results/task_change_study/tension.py [--arith1t | --zen4]

Session 35. Without ``--arith1t`` it reads only figures sessions 32-34 already reported (not
declared): for each of this host's 12 zoos with main-job runs (A and v5, training seeds 0-5;
search seeds 100-102, the seeds both designs ran), it puts the regime's statistic (the best judged
plain merge's worst share, TEST, ``table.py``'s parse) beside the main job's mean margin over the
references (front test hypervolume / the references' - 1, ``main_job.py``'s), and counts the zoos
that meet both of the issue's targets: the regime holds, and every search seed's front beats the
references by >= 20 %. Then a least-squares line of the margin on the worst share over the 12 zoos
(slope with a 95 % interval), the worst share where that line crosses +20 %, and the same for the
references' hypervolume, the quantity through which the regime enters the margin.

``--arith1t`` (the declared fifth): the same for the 12 zoos trained at 1 torch thread
(``arith1t/build_*``, ``arith1t/main_job_{A,v5}.json``), then the declared predictions, made from
the line fitted on the 2-thread zoos: each zoo's predicted mean margin, the slope on the new zoos,
and how many new zoos the band rule (both targets if and only if the worst share lies in [0.50,
the line's +20 % crossing)) classifies right.

``--zen4`` (session 40, declared third in ``results/zen4/README.md``): the same predictions for the
12 zoos trained at 1 thread on an AMD EPYC Zen 4 (``results/zen4/build_*``,
``results/zen4/main_job_{A,v5}.json``), judged on search seed 100 alone (the runs of the seeds
after it are listed, not judged).
"""

from __future__ import annotations

import argparse
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


table, main_job = _load(HERE / "table.py"), _load(HERE / "main_job.py")


def zoos(arith1t: bool, zen4: bool = False) -> list[dict]:
    """One row per (design, zoo seed): worst share, regime verdict, references' HV, margins."""
    designs = table.DESIGNS_ZEN4 if zen4 else table.DESIGNS_1T if arith1t else table.DESIGNS
    regime = table.load(designs, list(SEEDS))
    folder = table.ZEN4 if zen4 else HERE / "arith1t" if arith1t else None
    search = SEARCH[:1] if zen4 else SEARCH
    jobs = {
        "A": main_job.runs(folder / "main_job_A.json" if folder else HERE / "main_job_A.json"),
        "v5": main_job.runs(folder / "main_job_v5.json" if folder else main_job.V5),
    }
    out = []
    for rs, design in zip(regime.values(), ("v5", "A"), strict=True):
        for z in SEEDS:
            if z not in rs or any((z, s) not in jobs[design] for s in search):
                print(f"({design} zoo {z}: not every build or run is there; left out)")
                continue
            m = [main_job.margins(jobs[design][(z, s)])[0] for s in search]
            more = sorted(s for (zz, s) in jobs[design] if zz == z and s not in search)
            out.append({
                "design": design, "zoo": z, "worst": rs[z]["worst"], "holds": rs[z]["holds"],
                "ref": jobs[design][(z, SEARCH[0])]["rt"], "margins": m,
                "margin": statistics.mean(m), "both": rs[z]["holds"] and min(m) >= 20,
                "more": [(s, main_job.margins(jobs[design][(z, s)])[0]) for s in more],
            })  # fmt: skip
    return out


def fit(x: list[float], y: list[float], label: str, target: float = 20.0):
    """Print and return the least-squares line of ``y`` on ``x``."""
    line = stats.linregress(x, y)
    half = stats.t.ppf(0.975, len(x) - 2) * line.stderr
    cross = (target - line.intercept) / line.slope
    print(f"margin over the references on {label}: {line.intercept:+.1f} + slope "
          f"{line.slope:+.1f} points a unit [{line.slope - half:+.1f}, {line.slope + half:+.1f}], "
          f"r {line.rvalue:+.2f}; the line crosses +{target:.0f} % at {label} {cross:.3f}")  # fmt: skip
    return line, cross, half


def report(rows: list[dict], predict=None) -> None:
    head = "| design | zoo seed | worst share | regime | references' test HV | margin over the references per search seed | mean |"
    print(head + (" predicted |" if predict else "") + " both targets |")
    print("|---" * (9 if predict else 8) + "|")
    for r in rows:
        pred = f" {predict(r['worst']):+.1f} % |" if predict else ""
        print(f"| {r['design']} | {r['zoo']} | {r['worst']:.2f} | "
              f"{'holds' if r['holds'] else 'no'} | {r['ref']:.4f} | "
              + " / ".join(f"{v:+.1f}" for v in r["margins"])
              + f" | {r['margin']:+.1f} % |{pred} {'yes' if r['both'] else 'no'} |")  # fmt: skip
    print()
    for design in ("v5", "A"):
        mine = [r for r in rows if r["design"] == design]
        print(f"{design}: both targets on {sum(r['both'] for r in mine)} of {len(mine)} zoos")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--arith1t", action="store_true", help="the 1-thread zoos (declared fifth)")
    which.add_argument("--zen4", action="store_true", help="the Zen 4's zoos (session 40)")
    args = parser.parse_args()
    old = zoos(False)
    if not (args.arith1t or args.zen4):
        report(old)
        xs, ys = [r["worst"] for r in old], [r["margin"] for r in old]
        fit(xs, ys, "the worst share")
        fit([r["ref"] for r in old], ys, "the references' test HV")
        rho = stats.spearmanr(xs, [r["ref"] for r in old])
        print(f"worst share against the references' test HV: Spearman {rho.statistic:+.2f} "
              f"(p {rho.pvalue:.3f}), {len(xs)} zoos; worst share mean {np.mean(xs):.3f}")  # fmt: skip
        return
    print("the line fitted on the 2-thread zoos (the declared predictor):")
    line, cross, _ = fit([r["worst"] for r in old], [r["margin"] for r in old], "the worst share")
    new = zoos(True, zen4=args.zen4)
    print()
    report(new, lambda w: line.intercept + line.slope * w)
    for r in new:
        if r["more"]:
            print(f"{r['design']} zoo {r['zoo']}, later search seeds (not judged): "
                  + ", ".join(f"seed {s} {m:+.1f} %" for s, m in r["more"]))  # fmt: skip
    xs, ys = [r["worst"] for r in new], [r["margin"] for r in new]
    print("\nthe new zoos' own line:")
    mine, _, half = fit(xs, ys, "the worst share")
    pred = [line.intercept + line.slope * w for w in xs]
    r = stats.pearsonr(pred, ys).statistic
    right = sum((0.50 <= w < cross) == row["both"] for w, row in zip(xs, new, strict=True))
    first = mine.slope + half < 0
    second = right >= 9
    print(f"predicted against observed mean margin: r {r:+.2f}, mean error "
          f"{statistics.mean(y - p for y, p in zip(ys, pred, strict=True)):+.1f} points")  # fmt: skip
    print(f"1. slope on the new zoos negative, interval below 0: {'yes' if first else 'NO'}")
    print(f"2. the band [0.50, {cross:.3f}) classifies {right} of {len(new)} right (declared: "
          f">= 9): {'yes' if second else 'NO'}")  # fmt: skip
    print("the band " + ("carries to the new zoos" if first and second else
                         "does not carry to the new zoos"))  # fmt: skip


if __name__ == "__main__":
    main()
