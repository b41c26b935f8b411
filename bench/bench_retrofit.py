"""Cost of a retrofit: training tokens/s of a retrofitted tiny Llama with cycle xk (k extra
copies) against the same model without reuse (k = 0), and peak memory of a training step with and
without activation checkpointing (per virtual layer, non-reentrant).

    .venv/bin/python bench/bench_retrofit.py [--device cpu|cuda] [--method lora|full] [--out FILE]

Every figure is printed beside the ratio to the no-reuse reference measured in the same run.
Memory: on CUDA, torch.cuda.max_memory_allocated above the weights; on CPU (Linux), the
process's peak RSS over a training step above its RSS before it (less grads and AdamW state),
in a fresh subprocess per setting, with glibc returning large blocks at free.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_source(path: Path, hidden: int, layers: int, vocab: int) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32), vocab_size=vocab, max_position_embeddings=4096,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(str(path))


def make_model(source, k, method, checkpointing, device):
    from vld.model import Backend
    from vld.retrofit.api import prepare_retrofit

    model, info = prepare_retrofit(
        source, {"pattern": "cycle", "k": k}, method=method, backend=Backend(activation_checkpointing=checkpointing)
    )
    return model.to(device).train(), info


def train_step(model, optimizer, tokens):
    import torch.nn.functional as F

    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), tokens[:, 1:].reshape(-1))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def throughput(args, source, ks, device) -> list[dict]:
    """Tokens/s per k. The settings are timed in interleaved rounds and each keeps its best
    round, so load from other processes hits every setting alike and is filtered out."""
    import torch

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=generator).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    runs = []
    for k in ks:
        model, info = make_model(source, k, args.method, False, device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for _ in range(args.warmup):
            train_step(model, optimizer, tokens)
        runs.append((k, info, model, optimizer, []))
    for _ in range(args.rounds):
        for k, info, model, optimizer, times in runs:
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                train_step(model, optimizer, tokens)
            sync()
            times.append(time.perf_counter() - start)
    return [
        {
            "k": k, "effective_depth": info["effective_depth"],
            "tokens_per_s": args.steps * args.batch * args.seq / min(times),
            "params": model.parameter_count(),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
        for k, info, model, optimizer, times in runs
    ]


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as handle:  # "5": reset the peak RSS (Linux >= 4.0)
        handle.write("5")


def status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_here(args, source, k, checkpointing, device) -> int:
    """Bytes a training step needs above the model and optimizer state, measured in this process."""
    import torch

    model, _ = make_model(source, k, args.method, checkpointing, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens = torch.randint(0, args.vocab, (args.mem_batch, args.mem_seq + 1), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(device)
    if device == "cuda":
        train_step(model, optimizer, tokens)  # optimizer state now exists; its memory is not counted
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        train_step(model, optimizer, tokens)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    # Peak RSS over the step: reset the kernel's high-water mark (VmHWM) to the current RSS
    # first, so memory touched while the model was built does not count. The first step is the
    # one measured (a second one reuses its freed memory); what it keeps for good (grads, AdamW
    # state) is taken out.
    reset_peak_rss()
    before = status_kib("VmRSS")
    train_step(model, optimizer, tokens)
    grown = (status_kib("VmHWM") - before) * 1024
    kept = 3 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)  # grad + 2 moments, fp32
    return max(grown - kept, 0)


def peak_memory(args, source, k, checkpointing, device) -> int:
    if device == "cuda":
        return peak_memory_here(args, source, k, checkpointing, device)
    # CPU: ru_maxrss only grows, so each setting runs in a fresh process.
    command = [sys.executable, __file__, "--_memory-child", str(source), str(k), str(int(checkpointing)), *args.passthrough]
    # Large blocks straight from mmap, returned at free: RSS then follows live memory instead of
    # glibc reusing memory freed while the model was built.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return int(output.strip().splitlines()[-1])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--method", default="lora", choices=["full", "lora", "lora_per_visit"])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--mem-batch", type=int, default=8)
    parser.add_argument("--mem-seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds; the best counts")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ks", default="0,1,2", help="cycle extra copies to measure (0 = no reuse)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--_memory-child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # What a CPU memory child needs to rebuild the same setting.
    args.passthrough = [
        "--method", args.method, "--vocab", str(args.vocab), "--device", args.device, "--threads", str(args.threads),
        "--mem-batch", str(args.mem_batch), "--mem-seq", str(args.mem_seq),
    ]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    if args._memory_child is not None:
        source, k, checkpointing = args._memory_child
        print(peak_memory_here(args, source, int(k), bool(int(checkpointing)), "cpu"))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_retrofit: --device cuda but no GPU is visible")
    ks = [int(k) for k in args.ks.split(",")]
    if ks[0] != 0:
        ks = [0] + ks  # the no-reuse reference is always measured
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "tiny_llama"
        build_source(source, args.hidden, args.layers, args.vocab)
        print(f"# retrofit bench: Llama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
              f"method {args.method}, device {args.device}, threads {args.threads}")
        print(f"# throughput: batch {args.batch} x seq {args.seq}, best of {args.rounds} interleaved rounds"
              f" of {args.steps} steps after {args.warmup} warmup")
        rows = throughput(args, source, ks, args.device)
        reference = rows[0]["tokens_per_s"]
        print(f"{'cycle':>7} {'depth':>5} {'tokens/s':>10} {'vs no reuse':>11} {'x depth':>8} {'params':>9} {'trainable':>9}")
        for row in rows:
            row["ratio_to_no_reuse"] = row["tokens_per_s"] / reference
            print(f"x{row['k']:<6} {row['effective_depth']:>5} {row['tokens_per_s']:>10.0f} "
                  f"{row['ratio_to_no_reuse']:>11.3f} {row['ratio_to_no_reuse'] * (row['k'] + 1):>8.2f} "
                  f"{row['params']:>9} {row['trainable_params']:>9}")
        print(f"# peak memory of one training step above weights+optimizer: batch {args.mem_batch} x seq {args.mem_seq}")
        memory = []
        for k in ks:
            plain = peak_memory(args, source, k, False, args.device)
            checkpointed = peak_memory(args, source, k, True, args.device)
            memory.append({"k": k, "plain_bytes": plain, "checkpointed_bytes": checkpointed})
        base_plain = memory[0]["plain_bytes"] or 1
        print(f"{'cycle':>7} {'plain MiB':>10} {'ckpt MiB':>10} {'ckpt/plain':>10} {'plain vs x0':>11}")
        for row in memory:
            print(f"x{row['k']:<6} {row['plain_bytes'] / 2**20:>10.1f} {row['checkpointed_bytes'] / 2**20:>10.1f} "
                  f"{row['checkpointed_bytes'] / max(row['plain_bytes'], 1):>10.3f} {row['plain_bytes'] / base_plain:>11.2f}")
    if args.out:
        from vld.atomic import write_json

        write_json(args.out, {"args": {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "passthrough"},
                              "throughput": rows, "memory": memory})


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
