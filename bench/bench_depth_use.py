"""Cost of the depth-use ablations (vld.eval.depth_use) against one plain evaluation pass.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_depth_use.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_depth_use.py --d-model 128 --seq 256 --sequences 64

For each model (a 2-layer base, its cycle x1 [0, 1, 0, 1], a native 4-layer model; GPT-2
blocks), in the same run on the same sequences: (a) one plain evaluation pass (forward +
per-sequence loss), (b) depth_use over the same sequences (ablations + early exit + the
intact pass). Reported: seconds and the ratio (b) / (a), and the layer-run ratio the result
records; (b) / (a) times max_sequences / test-set size is the share of an evaluation.
"""

from __future__ import annotations

import argparse
import json
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    import torch
    import torch.nn.functional as F

    from vld.eval.depth_use import depth_use
    from vld.model import ModelConfig, VLDTransformer

    args = parse_args(argv)

    def score(logits, batch):
        tokens = batch["tokens"]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                               tokens[:, 1:].reshape(-1), reduction="none")
        return loss.view(tokens.shape[0], -1).mean(-1)

    tokens = torch.randint(0, args.vocab, (args.sequences, args.seq),
                           generator=torch.Generator().manual_seed(0))
    batches = [{"tokens": tokens[i:i + args.batch]} for i in range(0, args.sequences, args.batch)]
    rows = []
    for name, n_layer, schedule in (("base 2L", 2, None), ("cycle x1", 2, [0, 1, 0, 1]),
                                    ("native 4L", 4, None)):
        torch.manual_seed(0)
        model = VLDTransformer(ModelConfig(vocab_size=args.vocab, n_layer=n_layer, d_model=args.d_model,
                                           n_head=args.heads, max_seq_len=args.seq,
                                           schedule=schedule)).eval()
        plain, ablations = float("inf"), float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            with torch.inference_mode():
                for batch in batches:
                    score(model(batch["tokens"]), batch)
            plain = min(plain, time.perf_counter() - started)
            started = time.perf_counter()
            result = depth_use(model, batches, score, max_sequences=None)
            ablations = min(ablations, time.perf_counter() - started)
        rows.append({"model": name, "depth": model.effective_depth, "plain_s": round(plain, 4),
                     "depth_use_s": round(ablations, 4), "ratio": round(ablations / plain, 2),
                     "layer_run_ratio": result["cost"]["ablation_to_intact"]})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"settings": vars(args), "threads": torch.get_num_threads(),
                      "note": "measured under load (shared cores); ratios are same-run"}))


if __name__ == "__main__":
    main()
