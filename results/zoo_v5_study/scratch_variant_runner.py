"""Scratch: build_zoo.run without extras, with add's rare digits patched (study only)."""
import sys, time
import numpy as np
from rich.console import Console
import merge_env.scoring.tasks.synthetic as syn
seed = int(sys.argv[1]); add_rare = sys.argv[2]; settings = sys.argv[3:]
syn.RARE_SYMBOLS["add"] = add_rare
from experiments.build_zoo import zoo_config, score_zoo, print_table, print_regime
from merge_env.pools.zoo import build_zoo
from merge_env.pools.regime import LAMBDA_GRIDS
console = Console(width=200)
config = zoo_config("default", seed, settings)
t = time.perf_counter()
zoo = build_zoo(config, f"/tmp/study/cache_{add_rare}", progress=False, device="cpu", extras=False)
console.print(f"add rare {add_rare} settings {settings} seed {seed}: base + experts {zoo.build_seconds:.1f} s (wall {time.perf_counter()-t:.1f} s)")
scores = score_zoo(zoo, "test", "cpu")
print_table(zoo, scores, console, f"TEST split ({len(zoo.tasks[0].test)} per task)")
print_regime(zoo, console, "cpu", LAMBDA_GRIDS)
