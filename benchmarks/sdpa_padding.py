"""SDPA's backends on GRPO's padded training batches, alone: which give NaN, and what a forward + backward costs.

On an H200 (2026-12-04) the GRPO step with train.cudnn_attention true and train.pad_to_multiple_of 64 stopped at step
1 with a NaN gradient norm, while unpadded cuDNN ran (benchmarks/README.md). This isolates the attention call the way
transformers makes it for Gemma 3 in training: queries of --heads heads, one K/V head repeated to them, head_dim 256,
a boolean mask that is causal (and --window wide for the sliding layers) and hides each row's left padding. The
padding: `none` (no row padded), `some` (every row but the longest padded on the left by a random amount: a batch
padded to its longest row) or `all` (the longest row too: what padding to a multiple does). A padded row's padding
queries mask every key. --lengths are best given in pairs, one a multiple of 64 (padding to 64 makes every length one)
and one not. Per backend, length and padding: NaN in the output, in the real (unpadded) query rows' output, and in the
query/key/value gradients; the first call's seconds (cuDNN builds its plan for a new shape there) and the median of the
later ones.

    python benchmarks/sdpa_padding.py --out $OUT/sdpa_padding.json   # GPU: cudnn,efficient,math
"""

import argparse
import json
import statistics
import time

import torch
from common import DEVICE, sync
from torch.nn.attention import SDPBackend, sdpa_kernel

from mcgrpo.fileio import write_json

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--backends", default="cudnn,efficient,math" if DEVICE == "cuda" else "math")
parser.add_argument("--batch", type=int, default=16, help="rows of a micro-batch (train.per_device_train_batch_size)")
parser.add_argument("--heads", type=int, default=4)
parser.add_argument("--head-dim", type=int, default=256)
parser.add_argument("--lengths", default="1280,1300", help="padded sequence lengths, each its own shape")
parser.add_argument("--max-pad", type=int, default=400, help="a row's left padding is drawn from 0..max-pad")
parser.add_argument("--window", type=int, default=512, help="the sliding layers' window; 0: the global layers only")
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--out", required=True)
args = parser.parse_args()
dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32


def padded_mask(pads: torch.Tensor, length: int, window: int) -> torch.Tensor:
    """(batch, 1, L, L) True where a query may attend: causal, within `window` if any, and not a key of the padding."""
    position = torch.arange(length, device=DEVICE)
    allowed = position[None, :] <= position[:, None]
    if window:
        allowed &= position[:, None] - position[None, :] < window
    real_key = position[None, :] >= pads[:, None]
    return (allowed[None] & real_key[:, None, :])[:, None]


PADDINGS = ("none", "some", "all")


def case(backend: str, length: int, window: int, padding: str, generator: torch.Generator) -> dict:
    pads = torch.randint(1, args.max_pad + 1, (args.batch,), generator=generator).to(DEVICE)
    if padding == "none":
        pads.zero_()
    elif padding == "some":
        pads[0] = 0  # the longest row
    mask = padded_mask(pads, length, window)
    shape = (args.batch, args.heads, length, args.head_dim)
    q = torch.randn(shape, generator=generator).to(DEVICE, dtype).requires_grad_()
    kv_shape = (args.batch, 1, length, args.head_dim)
    k, v = (torch.randn(kv_shape, generator=generator).to(DEVICE, dtype).requires_grad_() for _ in range(2))
    seconds, result = [], {}
    for _ in range(args.repeats):
        q.grad = k.grad = v.grad = None
        sync()
        start = time.perf_counter()
        try:
            with sdpa_kernel([BACKENDS[backend]]):
                out = torch.nn.functional.scaled_dot_product_attention(
                    q, k.expand(-1, args.heads, -1, -1), v.expand(-1, args.heads, -1, -1), attn_mask=mask)
                out.float().square().mean().backward()
        except RuntimeError as error:  # the backend refuses this input (dtype, head_dim, mask): say so, go on
            return {"error": str(error).splitlines()[0][:200]}
        sync()
        seconds.append(time.perf_counter() - start)
    real_query = torch.arange(length, device=DEVICE)[None, :] >= pads[:, None]  # (batch, L)
    result["nan_output"] = bool(out.isnan().any())
    result["nan_output_real_rows"] = bool(out.isnan().any(dim=(1, 3))[real_query].any())
    result["nan_grads"] = {name: bool(t.grad.isnan().any()) for name, t in (("q", q), ("k", k), ("v", v))}
    result["first_call_s"] = round(seconds[0], 4)
    result["median_later_s"] = round(statistics.median(seconds[1:]), 4) if len(seconds) > 1 else None
    return result


results = []
generator = torch.Generator().manual_seed(0)
for backend in args.backends.split(","):
    if backend not in BACKENDS:
        parser.error(f"--backends: unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    for length in map(int, args.lengths.split(",")):
        for window in sorted({0, args.window}):
            for padding in PADDINGS:
                row = {"backend": backend, "length": length, "window": window, "padding": padding,
                       **case(backend, length, window, padding, generator)}
                print(json.dumps(row), flush=True)
                results.append(row)
write_json(args.out, {"machine": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
                      "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "dtype": str(dtype),
                      "batch": args.batch, "heads": args.heads, "head_dim": args.head_dim, "cases": results})
