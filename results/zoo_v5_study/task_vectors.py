"""Task-vector sizes and cosines of a zoo's three experts (session 17 analysis).

    python results/zoo_v5_study/task_vectors.py ZOO_DIR...

Per zoo, for the body (every tensor but the embeddings and LM head) and for the embeddings + head
apart: each expert's task vector norm relative to the base's norm, and the cosine between each
pair of experts' task vectors.
"""

import glob
import sys

import torch
from safetensors.torch import load_file

TASKS = ("add", "reverse", "cipher")


def load(folder: str) -> dict[str, torch.Tensor]:
    return load_file(glob.glob(f"{folder}/*.safetensors")[0])


def flat(state: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    return torch.cat([state[k].flatten().float() for k in keys])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def report(root: str) -> str:
    base = load(f"{root}/base")
    experts = {t: load(f"{root}/experts/{t}") for t in TASKS}
    parts = []
    for part in ("body", "emb"):
        keys = [k for k in base if ("embed" in k or "lm_head" in k) == (part == "emb")]
        origin = flat(base, keys)
        vec = {t: flat(experts[t], keys) - origin for t in TASKS}
        rel = " ".join(f"{t}:{float(vec[t].norm() / origin.norm()):.3f}" for t in TASKS)
        pairs = (("a-r", "add", "reverse"), ("a-c", "add", "cipher"), ("r-c", "reverse", "cipher"))
        cos = " ".join(f"{n} {cosine(vec[a], vec[b]):.2f}" for n, a, b in pairs)
        parts.append(f"{part} rel {rel} cos {cos}")
    return f"{root.rstrip('/').split('/')[-1]} " + " | ".join(parts)


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print(report(folder))
