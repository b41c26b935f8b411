"""One-shot device check of the VLD transformer: correctness on the accelerator, then speed.

    PYTHONPATH=src python3 bench/gpu_check.py --out $OUT/gpu_check.json             # H100, < 6 min
    .venv/bin/python bench/gpu_check.py --device cpu --small --out /tmp/gc.json      # dry run

Sections (--sections picks a subset; they run in this order):
  env         torch / CUDA versions, device name
  exact       fp32 on the device vs fp64 on CPU (same weights); a tied cycle schedule vs its
              unrolled copy: logits, and each base-layer grad vs the sum of its copies' grads
              (gpt2 and llama blocks)
  generate    batched greedy generation, KV cache vs recompute, for each built-in pattern
  compile     torch.compile vs eager: first-step logits, loss curves of 5 AdamW steps
  memory      peak CUDA memory of a bf16 fwd+bwd with and without activation checkpointing,
              cycle k = 0, 1, 3, 5; grads with vs without checkpointing (fp32)
  throughput  bf16 training tokens/s: base, cycle x1..x3, block-stack ratio, base compiled, MFU
  hf          Hugging Face GPT2LMHeadModel (sdpa) at the throughput size vs our base
Correctness runs in fp32 with TF32 off. A failing section is recorded as {"error": ...} and the
next one runs; the JSON is rewritten atomically after every section, so a kill loses little.
Imports only torch, vld.model and (guarded) transformers: no mlflow/dvc/omegaconf needed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from vld.atomic import write_json
from vld.model import Backend, ModelConfig, ScheduleSpec, VLDTransformer, resolve_schedule

SECTIONS = ("env", "exact", "generate", "compile", "memory", "throughput", "hf")
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="shrink every size (dry run)")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma list of: " + ", ".join(SECTIONS))
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
    args.device = torch.device(args.device)
    args.cuda = args.device.type == "cuda"
    small = args.small
    # correctness model, paper-like memory model, igsm-4l-like throughput model
    def dims(width, heads, vocab, seq, batch):
        if small:
            width, heads, vocab, seq, batch = 64, 4, 128, 64, 2
        return SimpleNamespace(width=width, layers=4, heads=heads, vocab=vocab, seq=seq, batch=batch)

    args.tiny, args.mem, args.big = dims(256, 4, 512, 128, 4), dims(768, 12, 2048, 512, 8), dims(768, 12, 2048, 768, 16)
    args.warmup, args.steps = (1, 3) if small else (3, 10)
    return args


# -- helpers
def config(d, schedule=None, **extra) -> ModelConfig:
    return ModelConfig(vocab_size=d.vocab, n_layer=d.layers, d_model=d.width, n_head=d.heads,
                       max_seq_len=d.seq, schedule=schedule, **extra)


def cycle(n_layer: int, k: int) -> list[int]:
    return resolve_schedule(ScheduleSpec("cycle", k), n_layer)


def build(cfg: ModelConfig, device, seed: int = 0) -> VLDTransformer:
    torch.manual_seed(seed)  # same seed, same config -> same weights
    return VLDTransformer(cfg).to(device)


def batch(d, device, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, d.vocab, (d.batch, d.seq + 1), generator=generator)
    return tokens[:, :-1].to(device), tokens[:, 1:].to(device)


def loss_of(logits, targets):
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def maxdiff(a, b) -> float:
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item()


def sync(args) -> None:
    if args.cuda:
        torch.cuda.synchronize()


def trainer(args, model, forward=None, autocast=True, lr=1e-4):
    """A closure doing one AdamW step; returns (loss, logits)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    forward = model if forward is None else forward

    def step(x, y):
        with torch.autocast(args.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = forward(x)
        loss = loss_of(logits, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss, logits

    return step


def median_step_s(args, step, x, y) -> tuple[float, float]:
    """(median seconds of the timed steps, seconds of the first step: includes any compile)."""
    times = []
    for _ in range(args.warmup + args.steps):
        sync(args)
        start = time.perf_counter()
        step(x, y)
        sync(args)
        times.append(time.perf_counter() - start)
    return statistics.median(times[args.warmup:]), times[0]


# -- sections
def sec_env(args, put):
    put("torch", torch.__version__)
    put("cuda", torch.version.cuda)
    put("cudnn", torch.backends.cudnn.version() if args.cuda else None)
    put("python", sys.version.split()[0])
    put("device", torch.cuda.get_device_name(args.device) if args.cuda else "cpu")
    if args.cuda:
        props = torch.cuda.get_device_properties(args.device)
        put("capability", f"{props.major}.{props.minor}")
        put("memory_gib", round(props.total_memory / 2**30, 1))
    put("tf32", torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


def sec_exact(args, put):
    d = args.tiny
    x, y = batch(d, args.device)
    model = build(config(d), args.device).eval()
    reference = copy.deepcopy(model).to("cpu", torch.float64)  # .to keeps the embedding tie
    with torch.no_grad():
        put("fp32_vs_fp64_logits_maxabs", maxdiff(model(x), reference(x.cpu())))
    for block in ("gpt2", "llama"):
        tied = build(config(d, schedule=cycle(d.layers, 2), block=block), args.device).train()
        flat = tied.unrolled()
        logits_tied, logits_flat = tied(x), flat(x)
        put(f"{block}_cycle_x2_vs_unrolled_logits_maxabs", maxdiff(logits_tied, logits_flat))
        loss_of(logits_tied, y).backward()
        loss_of(logits_flat, y).backward()
        worst, scale = 0.0, 0.0
        for index, layer in enumerate(tied.layers):
            for name, param in layer.named_parameters():
                # a shared weight's grad is the sum of its per-visit grads
                copies = [flat.layers[slot].get_parameter(name).grad for slot, i in enumerate(tied.schedule) if i == index]
                worst = max(worst, maxdiff(param.grad, torch.stack(copies).sum(0)))
                scale = max(scale, param.grad.abs().max().item())
        put(f"{block}_shared_grad_vs_sum_of_copies_maxabs", worst)
        put(f"{block}_grad_maxabs (scale)", scale)


def sec_generate(args, put):
    d = args.tiny
    generator = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, d.vocab, (n,), generator=generator).tolist() for n in (5, 9, 14)]
    cases = [("base", 0, None, "gpt2"), ("sequence", 1, None, "gpt2"), ("sequence", 2, None, "gpt2"),
             ("cycle", 1, None, "gpt2"), ("cycle", 2, None, "gpt2"), ("inverse_cycle", 1, None, "gpt2"),
             ("inverse_cycle", 2, None, "gpt2"), ("cycle", 2, "1..2", "gpt2"), ("cycle", 1, None, "llama")]
    agree = True
    for pattern, k, layers, block in cases:
        order = resolve_schedule(ScheduleSpec(pattern, k, layers), d.layers)
        model = build(config(d, schedule=order, block=block), args.device).eval()
        cached = model.generate(prompts, 32, use_cache=True)
        fresh = model.generate(prompts, 32, use_cache=False)
        name = f"{block}_{pattern}_k{k}" + (f"_layers{layers}" if layers else "")
        put(f"{name}_cached_eq_uncached", cached == fresh)
        agree &= cached == fresh
        diffs = [(r, j) for r in range(len(prompts)) for j, (a, b) in enumerate(zip(cached[r], fresh[r])) if a != b]
        if diffs:  # a near-tie in the logits would explain a flip; report the margin there
            row, pos = diffs[0]
            with torch.no_grad():
                logits = model(torch.tensor([prompts[row] + fresh[row][:pos]], device=args.device))[0, -1]
            top = logits.float().topk(2).values
            put(f"{name}_first_mismatch", {"row": row, "pos": pos, "top2_gap": (top[0] - top[1]).item()})
    put("all_agree", agree)


def sec_compile(args, put):
    d = args.tiny
    x, y = batch(d, args.device)
    model = build(config(d, schedule=cycle(d.layers, 1)), args.device).train()
    eager = copy.deepcopy(model)
    compiled = torch.compile(model)  # shares its parameters with `model`
    steps = {"eager": trainer(args, eager, autocast=False, lr=1e-3),
             "compiled": trainer(args, model, compiled, autocast=False, lr=1e-3)}
    losses = {name: [] for name in steps}
    for i in range(5):
        first = {}
        for name, step in steps.items():
            start = time.perf_counter()
            loss, first[name] = step(x, y)
            losses[name].append(loss.item())
            if i == 0:
                put(f"{name}_first_step_s", round(time.perf_counter() - start, 3))
        if i == 0:
            put("first_step_logits_maxabs_vs_eager", maxdiff(first["compiled"], first["eager"]))
    put("loss_eager", losses["eager"])
    put("loss_compiled", losses["compiled"])
    put("loss_max_rel_diff", max(abs(c - e) / abs(e) for c, e in zip(losses["compiled"], losses["eager"])))


def sec_memory(args, put):
    d = args.mem
    run_big = args.cuda or args.small  # on CPU there is no peak counter; skip the big runs
    if run_big:
        x, y = batch(d, args.device)
    for k in (0, 1, 3, 5):
        if not run_big:
            put(f"cycle_k{k}", {"depth": d.layers * (k + 1), "peak_mib_off": None, "peak_mib_on": None})
            continue
        model = build(config(d, schedule=cycle(d.layers, k)), args.device).train()
        row = {"depth": model.effective_depth}
        for checkpointing in (False, True):
            model.set_backend(Backend(activation_checkpointing=checkpointing))
            gc.collect()
            if args.cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(args.device)
                before = torch.cuda.memory_allocated(args.device)
            with torch.autocast(args.device.type, dtype=torch.bfloat16):
                logits = model(x)
            loss_of(logits, y).backward()
            del logits
            model.zero_grad(set_to_none=True)
            sync(args)
            tag = "on" if checkpointing else "off"
            peak = torch.cuda.max_memory_allocated(args.device) if args.cuda else None
            row[f"peak_mib_{tag}"] = None if peak is None else round(peak / 2**20, 1)
            row[f"over_start_mib_{tag}"] = None if peak is None else round((peak - before) / 2**20, 1)
        if row.get("peak_mib_on") is not None:
            # peak minus what was allocated before (weights, batch): activations + grads
            row["saving"] = round(1 - row["over_start_mib_on"] / row["over_start_mib_off"], 3)
        put(f"cycle_k{k}", row)
        del model
    # checkpointing must not change the gradients (fp32, small model)
    t = args.tiny
    x, y = batch(t, args.device)
    model = build(config(t, schedule=cycle(t.layers, 1)), args.device).train()
    grads = []
    for checkpointing in (False, True):
        model.set_backend(Backend(activation_checkpointing=checkpointing))
        loss_of(model(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    put("fp32_grad_ckpt_vs_not_maxabs", max(maxdiff(grads[0][n], grads[1][n]) for n in grads[0]))


def sec_throughput(args, put):
    if not (args.cuda or args.small):
        put("skipped", "CPU without --small")
        return
    d = args.big
    x, y = batch(d, args.device)
    tokens = d.batch * d.seq
    put("shape", f"bf16 autocast, width {d.width}, {d.heads} heads, {d.layers} layers, seq {d.seq}, "
                 f"batch {d.batch}, vocab {d.vocab}; median of {args.steps} steps; mfu vs 989 TFLOP/s (H100 bf16)")

    def head_only(m):
        # embeddings + head + loss + AdamW, no block: the fixed cost of every step
        return lambda t: m.lm_head(m.norm_f(m.tok_emb(t) + m.pos_emb(torch.arange(t.shape[1], device=t.device))))

    def mfu(model, tps):
        return round(model.flops_per_token(d.seq, training=True) * tps / H100_BF16_PEAK, 4)

    base = build(config(d), args.device).train()
    step_base, _ = median_step_s(args, trainer(args, base), x, y)
    fixed, _ = median_step_s(args, trainer(args, base, head_only(base)), x, y)
    put("base", {"step_ms": round(step_base * 1e3, 2), "tokens_per_s": round(tokens / step_base), "mfu": mfu(base, tokens / step_base)})
    put("fixed_step_ms", round(fixed * 1e3, 2))
    for k in (1, 2, 3):
        model = build(config(d, schedule=cycle(d.layers, k)), args.device).train()
        step_k, _ = median_step_s(args, trainer(args, model), x, y)
        put(f"cycle_x{k}", {"step_ms": round(step_k * 1e3, 2), "tokens_per_s": round(tokens / step_k),
                            "step_ratio_vs_base": round(step_k / step_base, 3), "expected_about": k + 1,
                            "block_stack_ratio": round((step_k - fixed) / ((k + 1) * (step_base - fixed)), 3),
                            "mfu": mfu(model, tokens / step_k)})
        del model
    step_c, first = median_step_s(args, trainer(args, base, torch.compile(base)), x, y)
    put("base_compiled", {"step_ms": round(step_c * 1e3, 2), "tokens_per_s": round(tokens / step_c),
                          "speedup_vs_eager": round(step_base / step_c, 3), "compile_plus_first_step_s": round(first, 1),
                          "mfu": mfu(base, tokens / step_c)})


def sec_hf(args, put):
    if not (args.cuda or args.small):
        put("skipped", "CPU without --small")
        return
    try:
        import transformers
    except ImportError as err:
        put("skipped", f"transformers not importable: {err}")
        return
    put("transformers", transformers.__version__)
    from bench_model import hf_gpt2, hf_logits  # this script's folder is on sys.path

    d = args.big
    x, y = batch(d, args.device)
    torch.manual_seed(0)
    hf = hf_gpt2(d, d.seq).to(args.device)  # the CPU benchmark's reference model, same shape
    step_hf, _ = median_step_s(args, trainer(args, hf, lambda t: hf_logits(hf, t)), x, y)
    del hf  # free it before our model is built
    base = build(config(d), args.device).train()  # re-timed here: same conditions as HF
    step_base, _ = median_step_s(args, trainer(args, base), x, y)
    put("hf_gpt2_tokens_per_s", round(d.batch * d.seq / step_hf))
    put("vld_base_tokens_per_s", round(d.batch * d.seq / step_base))
    put("vld_over_hf", round(step_hf / step_base, 3))


# -- driver
def main(argv=None) -> None:
    args = parse_args(argv)
    # exact fp32 for the correctness sections; bf16 autocast ignores this for its matmuls
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    funcs = {name: globals()[f"sec_{name}"] for name in SECTIONS}
    results = {"meta": {"argv": sys.argv[1:], "device": str(args.device), "small": args.small,
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S")}}
    total = time.perf_counter()
    for name in (s for s in SECTIONS if s in args.sections):
        store = results[name] = {}

        def put(key, value, _store=store, _name=name):
            _store[key] = value
            print(f"{_name}.{key}: {value}", flush=True)

        start = time.perf_counter()
        torch.manual_seed(0)
        try:
            funcs[name](args, put)
        except Exception as err:  # record, go on: device time is precious
            put("error", f"{type(err).__name__}: {err}"[:2000])
            traceback.print_exc()
        gc.collect()
        if args.cuda:
            torch.cuda.empty_cache()
        put("seconds", round(time.perf_counter() - start, 1))
        write_json(args.out, results)
    results["meta"]["seconds"] = round(time.perf_counter() - total, 1)
    write_json(args.out, results)
    print(f"wrote {args.out} ({results['meta']['seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
