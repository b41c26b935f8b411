"""Time and peak memory of the knowledge-capacity measures at the paper's scale.

    .venv/bin/python bench/bench_knowledge.py            # k = 640,000, n = 50,257: several minutes on 2 cores
    .venv/bin/python bench/bench_knowledge.py --k 65537  # a tenth of the windows, same per-window cost

A 4-layer, width-184 GPT-2-style model (vld.model.VLDTransformer when importable, else a small
stand-in defined here) is evaluated with `all_knowledge_measures` (the paper's dH and the
cross-entropy estimate in one streaming pass) over all k tokens, eval length 1024 (the paper's).
Reported: wall time, throughput, peak RSS growth, and ratios against references measured in
the same run on the same windows: (a) the model's forward pass alone, (b) float32 instead of
float64 for the per-position sums.
"""

from __future__ import annotations

import argparse
import math
import resource
import tempfile
import time
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=640_000)
    parser.add_argument("--n", type=int, default=50_257)
    parser.add_argument("--width", type=int, default=184)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4, help="not given by the paper; 184 / 4 = 46 per head")
    parser.add_argument("--seq", type=int, default=1024, help="eval window (the paper's eval length)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--ref-windows", type=int, default=8, help="windows used for the same-run reference ratios")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def build_model(args):
    from vld.model import ModelConfig, VLDTransformer

    config = ModelConfig(vocab_size=args.n, n_layer=args.layers, d_model=args.width, n_head=args.heads, max_seq_len=args.seq)
    return VLDTransformer(config), "vld.model.VLDTransformer (gpt2 block, tied)"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> None:
    args = parse_args(argv)
    import numpy as np
    import torch

    from vld.data.knowledge.random_tokens import make_random_tokens
    from vld.data.tokens import TokenSet, write_token_set
    from vld.eval.knowledge import all_knowledge_measures, eval_windows

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, kind = build_model(args)
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        data = TokenSet.open(make_random_tokens(args.k, args.n, 0, Path(tmp) / "full"))
        starts, _, _ = eval_windows(args.k, args.seq, 0)
        print(f"model: {kind}, {args.layers} layers, width {args.width}, {n_params / 1e6:.2f} M params; "
              f"data: k={args.k:,} n={args.n:,} ({data.meta['dataset_bits'] / 1e6:.3f} M bits); "
              f"{len(starts)} windows of {args.seq}, batch {args.batch}, {args.threads} threads")
        with torch.inference_mode():  # warm up kernels on a short input before the memory baseline
            model.eval()(torch.zeros(1, 8, dtype=torch.long))
        rss0 = peak_rss_mib()
        t0 = time.perf_counter()
        result = all_knowledge_measures(model, data, args.seq, batch_size=args.batch)
        elapsed = time.perf_counter() - t0
        rss1 = peak_rss_mib()
        full_matrix_gib = args.k * args.n * 4 / 2**30
        print(f"all measures: {elapsed:.1f} s ({result['n_predicted'] / elapsed:,.0f} tokens/s); "
              f"peak RSS {rss1:.0f} MiB (+{rss1 - rss0:.0f} MiB during the measures; "
              f"one k x n float32 matrix would be {full_matrix_gib:.1f} GiB)")
        print(f"  untrained model: dH = {result['absorbed_bits_entropy']:.1f} bits, "
              f"CE = {result['absorbed_bits_ce']:.1f} bits, dataset {result['dataset_bits']:.1f} bits")

        # same-run references on the first windows (a small token set holding just those tokens)
        n_ref = min(args.ref_windows, len(starts))
        ref_tokens = np.asarray(data.tokens[: n_ref * args.seq + 1])
        ref = write_token_set(Path(tmp) / "ref", ref_tokens, np.array([0, len(ref_tokens)]), args.n, {"generator": "vld.data.knowledge.random_tokens"})

        def timed(fn, repeats=2):
            best = math.inf
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            return best

        def forward_only():
            with torch.inference_mode():
                for lo in range(0, n_ref, args.batch):
                    rows = [torch.from_numpy(ref_tokens[s * args.seq : (s + 1) * args.seq].astype(np.int64)) for s in range(lo, min(lo + args.batch, n_ref))]
                    model(torch.stack(rows))

        t_forward = timed(forward_only)
        t_f64 = timed(lambda: all_knowledge_measures(model, ref, args.seq, batch_size=args.batch))
        t_f32 = timed(lambda: all_knowledge_measures(model, ref, args.seq, batch_size=args.batch, dtype=torch.float32))
        print(f"reference on {n_ref} windows: forward only {t_forward:.2f} s; measures float64 {t_f64:.2f} s "
              f"(x{t_f64 / t_forward:.2f} of forward), float32 {t_f32:.2f} s (x{t_f32 / t_forward:.2f}); "
              f"full run / forward-only extrapolated: x{elapsed / (t_forward * len(starts) / n_ref):.2f}")


if __name__ == "__main__":
    main()
