"""For each main-job run folder: how many cached SEARCH scores (any fidelity) beat z* on a task."""
import json, sqlite3, sys
from pathlib import Path
ZSTAR = {0: [0.9791666666666666, 1.0, 1.0], 1: [0.9583333333333334, 1.0, 1.0],
         2: [0.9895833333333334, 0.9895833333333334, 0.9791666666666666]}
TASKS = ["add", "atbash", "cipher"]
out = {}
for d in sys.argv[1:]:
    d = Path(d)
    name = d.name
    zoo = int(name[1]) if name.startswith("z") else int(name.split("_")[1][1:])
    z = dict(zip(TASKS, ZSTAR[zoo]))
    c = sqlite3.connect(d / "eval_cache.sqlite")
    n_above = {"full": 0, "cheap": 0}
    total = 0
    for key, em, n in c.execute("select key, exact_match, n from scores"):
        parts = key.split("::")
        task, split = parts[1], parts[2]
        if split != "search":
            continue
        total += 1
        if em > z[task] + 1e-12:
            n_above["full" if n == 96 else "cheap"] += 1
    out[str(d)] = {"zoo": zoo, "search_scores": total, **n_above}
    print(name, zoo, total, n_above)
