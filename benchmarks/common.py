"""What several benchmark scripts share: the random-init model at a preset's shape, GPU sync, and timing the
recorded decode graph alone. The scripts run as `python benchmarks/X.py`, so this folder is on their path."""

import time

import torch

from mcgrpo.tiny import build_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of a script (tiny preset), as the tests do


def random_model(preset: str):
    """mcgrpo.tiny.build_model at `preset`'s shape (gemma-3-1b: Gemma 3 1B's exact config), sdpa attention,
    bf16 on the GPU and fp32 on a CPU, in eval mode."""
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    return build_model(preset, dtype=dtype, attn_implementation="sdpa").to(DEVICE).eval()


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def replay_ms(generator, replays: int = 64, cache_position: int | None = None):
    """Milliseconds per replay of a StaticGenerator's recorded greedy decode graph alone (no per-token
    bookkeeping between replays); None where no graph was recorded (a CPU run). With cache_position, every
    replay writes that one slot."""
    graph = generator.decode_graph()
    if graph is None:
        return None
    if cache_position is not None:
        generator.set_cache_position(cache_position)
    sync()
    start = time.perf_counter()
    for _ in range(replays):
        graph.replay()
    sync()
    return round(1000 * (time.perf_counter() - start) / replays, 3)
