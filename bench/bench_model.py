"""Training throughput of the VLD transformer, measured against references in the same run.

    .venv/bin/python bench/bench_model.py            # every section (--sections picks some)
    .venv/bin/python bench/bench_model.py --quick    # fewer steps, rougher figures

The first line names this machine's CPU and the library `hardware.cpu_gemm: auto` picks for it
(vld.model.backend.CPU_GEMM_BY_CPU); the ceiling and the unlabelled VLD figures use that one.

0. the GEMMs of each layer shape's training step in torch's BLAS (MKL) and in oneDNN, the two
   choices of `Backend.cpu_gemm` (see vld.model.linear), and of the whole step's GEMMs, also as
   a share of each library's rate on one large GEMM (vld.host_speed's reference GEMM, the one a
   training stage times at its start and end); the k-hop models' shapes:
   `--sections gemm --width 96 --layers 2 --seq 33 --batch 64` (64 sequences of 33 positions);
1. identity schedule vs Hugging Face GPT2LMHeadModel (SDPA), same width/depth/heads/seq/batch,
   each trained in its own process (the steady state of a training run; see `hf_section`),
   under glibc's default allocator and again with freed memory kept (no page faults; what a
   vld training run does, vld.train.memory); our model runs with each cpu_gemm library (and,
   with --compile, under torch.compile); then the step's weight GEMMs, its attention and its
   GELU, each replayed alone: the GEMM ceiling, and the most of it the step could reach while
   it computes the attention and the GELU;
2. cycle xk (k = 1..3) vs base: block-stack time against (k+1) x the base block-stack time,
   and against the unrolled (untied) model of the same effective depth (schedule overhead);
3. greedy generation of 512 tokens with the KV cache vs recomputing the sequence each step;
4. (khop) positions/s of the default profile's k-hop stages, base (h2) and native4 (h4): their
   seeds stacked, through the real Lightning fit (vld.train.stacked.train_seeds), in a process
   each; with `--before REV` also the same with the `src/` of git revision REV (git archive),
   alternated with this tree's, and the ratio after / before; `--khop-precision
   32-true,bf16-mixed` runs each with both CPU precisions (ratio bf16-mixed / float32) and
   `--khop-cpu-gemm onednn,blas` with both GEMM libraries, `--khop-compile off,on` eager and
   under `compile: true` (each tree, precision, library and compile setting is a run of its
   own; ratios against the first), then the machine's own speed at the start
   and the end (one large GEMM's rate), which a shared host can move between runs:

    .venv/bin/python bench/bench_model.py --sections khop --before 75db141

All fp32 but `--khop-precision bf16-mixed`; `--khop-compile on` changes the arithmetic too. Processes (section 1) and steps (sections 2-3) of the models being compared
alternate, so machine load hits them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# section 1's processes: the model each trains (vld: with that cpu_gemm)
WORKERS = {"vld-onednn": "onednn", "vld-blas": "blas", "hf": None}
COMPILED = "vld-compiled"  # with --compile: torch.compile of the model with auto's library
SECTIONS = ("gemm", "hf", "cycle", "generate", "khop")
ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per model (fastest reported)")
    parser.add_argument("--gen-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="3 timed steps, 128 generated tokens, 30 k-hop steps")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time (all threads), less disturbed by other load; "
                             "use with --threads 1 on a busy machine")
    parser.add_argument("--sections", default="gemm,hf,cycle,generate,khop",
                        help="comma-separated subset of: " + ", ".join(SECTIONS))
    parser.add_argument("--rounds", type=int, default=2,
                        help="section 1: processes per model and allocator mode, alternated")
    parser.add_argument("--khop-models", default="h2,h4", help="section 4: k-hop models of params.yaml")
    parser.add_argument("--khop-steps", type=int, default=100, help="section 4: optimizer steps per run")
    parser.add_argument("--khop-warmup", type=int, default=10, help="section 4: steps before the timed ones")
    parser.add_argument("--seeds", type=int, default=3, help="section 4: seeds stacked (params.yaml: 3)")
    parser.add_argument("--before", metavar="REV", help="section 4: also run git revision REV's src/, for the ratio")
    parser.add_argument("--khop-precision", default="32-true",
                        help="section 4: comma-separated hardware.precision values to run each model with "
                             "(32-true, bf16-mixed), alternated; ratios against the first")
    parser.add_argument("--khop-cpu-gemm", default="auto",
                        help="section 4: comma-separated hardware.cpu_gemm values (auto, onednn, blas), "
                             "alternated like the precisions; ratios against the first run")
    parser.add_argument("--khop-compile", default="off",
                        help="section 4: comma-separated off / on: train eagerly or with hardware.compile: true "
                             "(torch.compile; its compilation is outside the timed steps), alternated like the "
                             "precisions; ratios against the first run")
    parser.add_argument("--small", action="store_true", help="section 4: tiny k-hop models (a smoke test)")
    parser.add_argument("--compile", action="store_true",
                        help="section 1: also train our model under torch.compile (inductor; changes the"
                             " arithmetic; about a minute of compilation per process)")
    parser.add_argument("--worker", choices=[*WORKERS, COMPILED], help=argparse.SUPPRESS)
    parser.add_argument("--khop-worker", help=argparse.SUPPRESS)
    parser.add_argument("--keep-freed-memory", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    sections = {name.strip() for name in args.sections.split(",") if name.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        from vld.errors import fail

        fail("--sections", f"unknown section {sorted(unknown)[0]!r} (known: {', '.join(SECTIONS)})")
    if args.khop_worker:
        khop_worker(args)
        return
    if args.quick:
        args.steps, args.gen_tokens, args.rounds = 3, 128, 1
        args.khop_steps, args.khop_warmup = 30, 5
    if args.keep_freed_memory:
        from vld.train.memory import keep_freed_memory

        keep_freed_memory()  # before torch allocates anything, as a training run's fit does
    import torch
    import torch.nn.functional as F

    from vld.model import Backend, ModelConfig, VLDTransformer
    from vld.model.backend import machine_cpu_gemm

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    n_tokens = args.batch * args.seq

    def config(schedule=None, n_layer=args.layers):
        return ModelConfig(vocab_size=args.vocab, n_layer=n_layer, d_model=args.width, n_head=args.heads,
                           max_seq_len=max(args.seq, 64 + args.gen_tokens), schedule=schedule)

    def trainer(model, logits_of, with_optimizer=True):
        # foreach: as vld.train.module's AdamW
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True) if with_optimizer else None

        def step():
            logits = logits_of(model, inputs)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            loss.backward()
            if optimizer is not None:
                optimizer.step()
            model.zero_grad(set_to_none=True)

        return step

    def race(steps: dict, n: int) -> dict:
        """Fastest seconds per step of each (the least disturbed by other load), interleaved
        round-robin with a rotating start after one warm-up each."""
        clock = clock_of(args)
        times = {name: [] for name in steps}
        for fn in steps.values():
            fn()
        names = list(steps)
        for round_ in range(n):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                start = clock()
                steps[name]()
                times[name].append(clock() - start)
        return {name: min(t) for name, t in times.items()}

    vld_logits = lambda m, x: m(x)  # noqa: E731
    chosen = machine_cpu_gemm()
    base = VLDTransformer(config(), backend=Backend(cpu_gemm=chosen)).train()
    if args.worker:
        if args.worker == "hf":
            model, logits_of = hf_gpt2(args, base.config.max_seq_len), hf_logits
        elif args.worker == COMPILED:
            model, logits_of = base, lambda m, x, compiled=torch.compile(base): compiled(x)
        else:
            model, logits_of = VLDTransformer(config(), backend=Backend(cpu_gemm=WORKERS[args.worker])).train(), vld_logits
        clock = clock_of(args)
        print(json.dumps(worker_times(trainer(model, logits_of), args.steps, clock)))
        return

    print(f"# CPU: {cpu_name()}; hardware.cpu_gemm auto -> {chosen}")
    print(f"# fp32, {args.threads} threads, width {args.width}, {args.layers} layers, {args.heads} heads, "
          f"seq {args.seq}, batch {args.batch}, vocab {args.vocab}, {args.clock} clock")
    print(f"{'measurement':44s} {'value':>12s} {'ratio':>8s}  reference")
    if "gemm" in sections:
        gemm_section(args, base, race, n_tokens)
    if "hf" in sections:
        step_s = hf_section(args, argv, n_tokens, chosen)
        floor = race({"gemm": weight_gemms(base, n_tokens)}, args.steps)["gemm"]
        vld_step = step_s[f"vld-{chosen}"]
        print(f"{'step s, its weight GEMMs alone (replayed)':44s} {floor:>12.4f} {floor / vld_step:>8.2f}  of the VLD step"
              f" ({chosen}; = its share of the ceiling)")
        print(f"{'  % of the GEMM ceiling reached':44s} {100 * floor / vld_step:>11.0f}% {'':>8s}  goal: 80%")
        print(f"{'  ceiling if all else were free':44s} {'':>12s} {step_s['hf'] / floor:>8.2f}  vs HF (no page faults)")
        kernels = race(kernel_replays(base, args.batch, args.seq), args.steps)
        for name, label in (("attention", "the attention (block-causal kernel)"), ("gelu", "the MLP's GELU (tanh form)")):
            print(f"{'step s, ' + label:44s} {kernels[name]:>12.4f} {kernels[name] / vld_step:>8.2f}  of the VLD step"
                  " (forward + backward, replayed alone)")
        cap = floor / (floor + kernels["attention"] + kernels["gelu"])
        print(f"{'  most % reachable with both kept':44s} {100 * cap:>11.0f}% {'':>8s}  weight GEMMs / (them + attention"
              " + GELU): the share if all else were free")
        note = replays_overrun(vld_step, floor + kernels["attention"] + kernels["gelu"])
        if note:
            print(note)

    if sections & {"cycle", "generate"}:
        print(f"# sections 2-3: fastest of {args.steps} interleaved steps")
    if "cycle" in sections:
        cycle_section(args, base, trainer, race, vld_logits, config)
    if "generate" in sections:
        generate_section(args, base)
    if "khop" in sections:
        khop_section(args)


def replays_overrun(step_s: float, replayed_s: float) -> str | None:
    """A warning when the parts replayed alone take longer than the step they were taken from: the
    host ran the replays slower than the step, so this run's shares of the ceiling overstate it."""
    if replayed_s <= step_s:
        return None
    return (f"# the replayed parts take {replayed_s:.4f} s, more than the step's {step_s:.4f} s: the host's speed "
            "moved within this run, so its ceiling shares are overestimates; run it again")


def clock_of(args):
    """--clock's timer: wall time, or the process's CPU time over all its threads."""
    return time.process_time if args.clock == "cpu" else time.perf_counter


def cpu_name() -> str:
    """This machine's CPU and torch as runs record them (vld.machine); the flags show whether
    it multiplies bfloat16 itself (only there does bf16-mixed gain)."""
    try:
        from vld.machine import describe_machine, machine_label
    except ImportError:  # an older tree's src/ on PYTHONPATH (the "before" of profile_step)
        import platform

        import torch

        return f"{platform.machine()} CPU (this src/ predates vld.machine), torch {torch.__version__}"
    return machine_label(describe_machine())


def hf_gpt2(args, max_seq_len: int):
    import transformers

    hf_config = transformers.GPT2Config(
        vocab_size=args.vocab, n_positions=max_seq_len, n_embd=args.width, n_layer=args.layers,
        n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa",
        bos_token_id=None, eos_token_id=None,
    )
    return transformers.GPT2LMHeadModel(hf_config).train()


def hf_logits(model, x):
    return model(input_ids=x, use_cache=False).logits


def worker_times(step, n: int, clock) -> dict:
    """Seconds and minor page faults of each of `n` steps after 2 warm-up steps."""
    import resource

    for _ in range(2):
        step()
    times, faults = [], []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = clock()
        step()
        times.append(clock() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"times": times, "faults": faults}


def hf_section(args, argv, n_tokens: int, chosen: str) -> dict:
    """Each model trains in a process of its own, as in a real run. In one process the two
    models' allocations interact (HF's freed heap spared our step its page faults), which
    inflated the ratio (1.17-1.30 from run to run, against 1.14 here, both with the BLAS).
    Processes alternate over `--rounds` to share machine load; the median step is reported.
    Returns the median step seconds with freed memory kept (no page faults)."""
    import statistics
    import subprocess
    import sys

    passed = sys.argv[1:] if argv is None else list(argv)
    workers = [*WORKERS, COMPILED] if args.compile else list(WORKERS)
    medians = {}
    for mode, extra in (("default allocator", []), ("freed memory kept (as vld training runs)", ["--keep-freed-memory"])):
        runs = {name: [] for name in workers}
        for round_ in range(args.rounds):
            order = workers[round_ % len(workers):] + workers[: round_ % len(workers)]
            for name in order:
                out = subprocess.run([sys.executable, __file__, *passed, "--worker", name, *extra],
                                     check=True, capture_output=True, text=True).stdout
                runs[name].append(json.loads(out.strip().splitlines()[-1]))
        step = {name: statistics.median(t for r in rs for t in r["times"]) for name, rs in runs.items()}
        faults = {name: statistics.median(f for r in rs for f in r["faults"]) for name, rs in runs.items()}
        print(f"# {mode}: median of {args.rounds} x {args.steps} steps per model, a process each")
        print(f"{'train tokens/s, HF GPT2LMHeadModel (sdpa)':44s} {n_tokens / step['hf']:>12,.0f} {'1.00':>8s}  "
              f"reference; {faults['hf']:,.0f} page faults/step")
        for name, library in WORKERS.items():
            if library is None:
                continue
            label = f"VLD, cpu_gemm={library}" + (" (auto)" if library == chosen else "")
            note = "HF's GEMM library" if library == "blas" else "oneDNN"
            print(f"{'train tokens/s, ' + label:44s} {n_tokens / step[name]:>12,.0f} "
                  f"{step['hf'] / step[name]:>8.2f}  vs HF ({note}); {faults[name]:,.0f} page faults/step")
        if args.compile:
            print(f"{'train tokens/s, VLD, torch.compile (' + chosen + ')':44s} {n_tokens / step[COMPILED]:>12,.0f} "
                  f"{step['hf'] / step[COMPILED]:>8.2f}  vs HF; {step[f'vld-{chosen}'] / step[COMPILED]:.2f}x eager"
                  f" ({chosen}); {faults[COMPILED]:,.0f} page faults/step")
        medians = step
    return medians


def linear_shapes(model) -> list[tuple[int, int]]:
    """(in, out) of every linear layer the step runs, the head included."""
    from vld.model.linear import Linear

    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, Linear)]


def training_gemms(shapes, n_tokens: int, cpu_gemm: str) -> list[tuple]:
    """For each (in, out): the three functions running that layer's training GEMMs (forward,
    input grad, weight grad) in `cpu_gemm`'s library, exactly as the model's backward does."""
    import torch

    from vld.model.linear import onednn_input_grad, onednn_linear, onednn_weight_grad

    gemms = []
    for in_features, out_features in shapes:
        x, w, grad_y = torch.randn(n_tokens, in_features), torch.randn(out_features, in_features), torch.randn(n_tokens, out_features)
        if cpu_gemm == "onednn":
            gemms.append((lambda x=x, w=w: onednn_linear(x, w), lambda w=w, g=grad_y: onednn_input_grad(g, w),
                          lambda x=x, g=grad_y: onednn_weight_grad(g, x)))
        else:
            gemms.append((lambda x=x, w=w: x @ w.t(), lambda w=w, g=grad_y: g @ w, lambda x=x, g=grad_y: g.t() @ x))
    return gemms


def weight_gemms(model, n_tokens: int):
    """One training step's weight GEMMs (forward, input grad, weight grad of every linear layer
    and the head) in the model's own GEMM library, without anything else: the floor under any
    implementation of this step with these kernels."""
    gemms = training_gemms(linear_shapes(model), n_tokens, model.backend.cpu_gemm)

    def step():
        for three in gemms:
            for gemm in three:
                gemm()

    return step


def kernel_replays(model, batch: int, seq: int) -> dict:
    """One training step's attention (the block-causal kernel, on q, k, v in the fused
    projection's layout through the model's own view and permute) and MLP activation (GPT-2's
    tanh-form GELU), each forward and backward in every virtual layer, alone."""
    import torch
    import torch.nn.functional as F

    from vld.model.attention import causal_attention

    cfg = model.config
    qkv_out = torch.randn(batch, seq, 3 * cfg.d_model, requires_grad=True)  # the qkv projection's output
    hidden = torch.randn(batch, seq, cfg.ff_dim, requires_grad=True)  # the MLP's first linear layer's output

    def attention(x):
        return causal_attention(x.view(batch, seq, 3, cfg.n_head, cfg.head_dim).permute(2, 0, 3, 1, 4))

    def replay(forward, x, grad_out):
        def step():
            for _ in range(model.effective_depth):
                # autograd.grad: the gradient handed back, not accumulated (the step never adds it up)
                torch.autograd.grad(forward(x), x, grad_out)
        return step

    return {"attention": replay(attention, qkv_out, torch.randn(batch, seq, cfg.d_model)),
            "gelu": replay(lambda x: F.gelu(x, approximate="tanh"), hidden, torch.randn_like(hidden))}


def gemm_section(args, base, race, n_tokens: int) -> None:
    """GFLOP/s of each distinct layer shape's training GEMMs: torch's BLAS against oneDNN."""
    from vld.host_speed import REFERENCE_GEMM_NAME

    shapes = sorted(set(linear_shapes(base)))
    libraries = {lib: dict(zip(shapes, training_gemms(shapes, n_tokens, lib))) for lib in ("blas", "onednn")}
    print(f"# GEMMs of one step's linear layers, {n_tokens} rows, GFLOP/s; fastest of {args.steps}")
    everything = linear_shapes(base)
    step_flops = sum(3 * 2 * n_tokens * i * o for i, o in everything)
    whole = {lib: training_gemms(everything, n_tokens, lib) for lib in libraries}
    timed = race({lib: (lambda gemms=gemms: [gemm() for three in gemms for gemm in three]) for lib, gemms in whole.items()},
                 args.steps)
    rates = {lib: step_flops / seconds / 1e9 for lib, seconds in timed.items()}
    label = "all of one step's GEMMs, BLAS | oneDNN"
    print(f"{label:44s} {rates['blas']:>5.0f} |{rates['onednn']:>5.0f} {rates['onednn'] / rates['blas']:>8.2f}  oneDNN vs BLAS")
    # Each library's rate on one large GEMM: how close the step's shapes come to what the
    # library reaches on this machine at all (small widths leave less to gain from faster kernels).
    large = large_gemm_rates(race, list(libraries), args.steps)
    label = f"forward {REFERENCE_GEMM_NAME}, BLAS | oneDNN"
    print(f"{label:44s} {large['blas']:>5.0f} |{large['onednn']:>5.0f} {large['onednn'] / large['blas']:>8.2f}"
          "  oneDNN vs BLAS: one large GEMM, each library's reference rate")
    label = "  the step's GEMMs / the large GEMM's rate"
    print(f"{label:44s} {100 * rates['blas'] / large['blas']:>4.0f}% |{100 * rates['onednn'] / large['onednn']:>4.0f}%"
          f" {'':>8s}  BLAS | oneDNN, each against its own")
    for shape in shapes:
        flops = 2 * n_tokens * shape[0] * shape[1]
        for index, name in enumerate(("forward", "input grad", "weight grad")):
            timed = race({lib: libraries[lib][shape][index] for lib in libraries}, args.steps)
            rates = {lib: flops / seconds / 1e9 for lib, seconds in timed.items()}
            label = f"{name} [{shape[0]} -> {shape[1]}], BLAS | oneDNN"
            print(f"{label:44s} {rates['blas']:>5.0f} |{rates['onednn']:>5.0f} {rates['onednn'] / rates['blas']:>8.2f}  oneDNN vs BLAS")


def cycle_section(args, base, trainer, race, vld_logits, config):
    import torch

    from vld.model import VLDTransformer

    # 2. cycle xk: the block stack must cost (k+1) x the base block stack.
    # Fixed cost (embeddings, head, loss, optimizer) is measured with no block at all.
    def head_only(m, x):
        h = m.tok_emb(x) + m.pos_emb(torch.arange(x.shape[1]))
        return m.lm_head(m.norm_f(h))

    cycled = {k: VLDTransformer(config(list(range(args.layers)) * (k + 1))).train() for k in (1, 2, 3)}
    steps = {"base": trainer(base, vld_logits), "fixed": trainer(base, head_only)}
    steps.update({f"cycle x{k}": trainer(m, vld_logits) for k, m in cycled.items()})
    unrolled3 = cycled[3].unrolled().train()
    # schedule overhead: tied x3 vs its untied copy, forward + backward only (AdamW's cost differs)
    steps["cycle x3 fwd+bwd"] = trainer(cycled[3], vld_logits, with_optimizer=False)
    steps["unrolled x3 fwd+bwd"] = trainer(unrolled3, vld_logits, with_optimizer=False)
    timed = race(steps, args.steps)  # half as many let one slow base step skew every ratio (0.93 once)
    fixed = timed["fixed"]
    block_base = timed["base"] - fixed
    print(f"{'step s, base (' + str(args.layers) + ' layers)':44s} {timed['base']:>12.3f} {'1.00':>8s}  reference")
    print(f"{'step s, embeddings+head+loss+AdamW only':44s} {fixed:>12.3f} {fixed / timed['base']:>8.2f}  vs base step")
    for k in (1, 2, 3):
        step = timed[f"cycle x{k}"]
        ratio = (step - fixed) / ((k + 1) * block_base)
        print(f"{'step s, cycle x' + str(k):44s} {step:>12.3f} {step / timed['base']:>8.2f}  vs base step")
        print(f"{'  block stack / ((k+1) x base block stack)':44s} {'':>12s} {ratio:>8.3f}  target 1 +- 0.05")
    overhead = timed["cycle x3 fwd+bwd"] / timed["unrolled x3 fwd+bwd"]
    print(f"{'fwd+bwd s, cycle x3 tied vs unrolled untied':44s} {timed['cycle x3 fwd+bwd']:>12.3f} {overhead:>8.3f}  schedule overhead (1.00 = none)")



def generate_section(args, base):
    # 3. generation: cached vs recomputed, 512 new tokens
    base.eval()
    prompts = [list(range(1, 17)), list(range(5, 13))]
    gen = {}
    for use_cache in (True, False):
        start = time.perf_counter()
        out = base.generate(prompts, args.gen_tokens, use_cache=use_cache)
        gen[use_cache] = (time.perf_counter() - start, out)
    assert gen[True][1] == gen[False][1], "cached and recomputed generations differ"
    n_new = sum(len(o) for o in gen[True][1])
    cached, uncached = n_new / gen[True][0], n_new / gen[False][0]
    print(f"{'generate tokens/s, recompute each step':44s} {uncached:>12,.0f} {'1.00':>8s}  reference ({len(prompts)} prompts x {args.gen_tokens} tokens)")
    print(f"{'generate tokens/s, KV cache':44s} {cached:>12,.0f} {cached / uncached:>8.2f}  vs recompute (same tokens)")


def khop_section(args) -> None:
    """Section 4: each (model, source tree, precision, cpu_gemm, compile) trains in a process of its own,
    alternating over --rounds; the best rate of each is printed, with its ratio to the first."""
    from vld.errors import fail
    from vld.host_speed import REFERENCE_GEMM_NAME, gemm_rate
    from vld.model.backend import resolve_cpu_gemm

    clock = clock_of(args)

    precisions, gemms = args.khop_precision.split(","), args.khop_cpu_gemm.split(",")
    compiles = args.khop_compile.split(",")
    if set(compiles) - {"off", "on"}:
        fail("--khop-compile", f"expected off and/or on, got {args.khop_compile!r}")
    # each option's library, resolved once; a typo fails here, not in the first worker after a minute of training
    libraries = {gemm: resolve_cpu_gemm(gemm, "--khop-cpu-gemm") for gemm in gemms}
    trees = {"this tree": ROOT / "src"}
    with tempfile.TemporaryDirectory() as tmp:
        if args.before:
            before = Path(tmp) / "before"
            before.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "src"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
            trees = {f"before {args.before}": before / "src", **trees}
        print(f"# k-hop stages through the Lightning fit: {args.seeds} seeds stacked, {args.threads} threads, "
              f"steps {args.khop_warmup + 1}..{args.khop_steps} timed; best of {args.rounds} processes each")
        # a label names only what varies between the runs
        runs = {", ".join([name] + ([precision] if len(precisions) > 1 else [])
                          + ([f"cpu_gemm {gemm}"] if len(gemms) > 1 else [])
                          + ([f"compile {compile_}"] if len(compiles) > 1 else [])): (src, precision, gemm, compile_)
                for name, src in trees.items() for precision in precisions for gemm in gemms for compile_ in compiles
                # an older tree's TrainConfig may have no compile setting: that tree runs eagerly only
                if compile_ == "off" or name == "this tree"}
        # the host's own speed at the start and the end: on a shared host it can move between runs
        # (docs/results/bench_khop_libraries_amd.txt), which only same-run ratios survive
        host_library = libraries[gemms[0]]
        reference = [gemm_rate(host_library, repeats=args.steps, clock=clock)]
        for model in args.khop_models.split(","):
            rates = {label: [] for label in runs}
            for round_ in range(args.rounds):
                labels = list(runs)[round_ % len(runs):] + list(runs)[: round_ % len(runs)]
                for label in labels:
                    src, precision, gemm, compile_ = runs[label]
                    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(ROOT / "bench")]),
                           "VLD_THREADS": str(args.threads)}
                    cmd = [sys.executable, __file__, "--khop-worker", model, "--threads", str(args.threads),
                           "--khop-steps", str(args.khop_steps), "--khop-warmup", str(args.khop_warmup),
                           "--seeds", str(args.seeds), "--khop-precision", precision, "--khop-cpu-gemm", gemm,
                           "--khop-compile", compile_, *(["--small"] if args.small else [])]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=tmp).stdout
                    result = json.loads(out.strip().splitlines()[-1])
                    if result["cpu_gemm"] != libraries[gemm]:
                        raise RuntimeError(f"{label}: the models ran {result['cpu_gemm']}, not {gemm}")
                    if result["compile"] != (compile_ == "on"):
                        raise RuntimeError(f"{label}: the models trained with compile {result['compile']}")
                    rates[label].append(result["positions_per_s"])
            best = {label: max(values) for label, values in rates.items()}
            first = next(iter(best))
            stage = {"h2": "base", "h4": "native4"}.get(model, model)
            width = max(58, *(len(f"positions/s, k-hop {stage} ({model}), {label}") for label in best))
            for label, rate in best.items():
                ratio = f"{rate / best[first]:>8.2f}" if len(best) > 1 else f"{'':>8s}"
                note = ""
                if len(best) > 1 and label != first:
                    note = f"  vs {first}" + (" (goal: 1.3)" if args.before else "")
                print(f"{f'positions/s, k-hop {stage} ({model}), {label}':{width}s} {rate:>12,.0f} {ratio}{note}")
        reference.append(gemm_rate(host_library, repeats=args.steps, clock=clock))
        label = f"host: GFLOP/s of {REFERENCE_GEMM_NAME} in {host_library}, start | end"
        print(f"{label:58s} {reference[0]:>5.0f} |{reference[1]:>5.0f} {reference[1] / reference[0]:>8.2f}"
              "  end vs start (the machine's own speed)")


def large_gemm_rates(race, libraries: list[str], steps: int) -> dict[str, float]:
    """GFLOP/s of vld.host_speed's reference GEMM in each library, raced (fastest of `steps`,
    the libraries alternating, where a training stage times only its own library)."""
    from vld.host_speed import reference_gemm, reference_gemm_flops

    timed = race({lib: reference_gemm(lib) for lib in libraries}, steps)
    return {lib: reference_gemm_flops() / seconds / 1e9 for lib, seconds in timed.items()}


def khop_worker(args) -> None:
    """One k-hop stage's seeds through train_seeds (vld from PYTHONPATH); prints positions/s
    between the end of step --khop-warmup and the end of the last step."""
    import dataclasses

    import torch
    from lightning.pytorch.callbacks import Callback

    from bench_seeds import seed_parts, setting
    from vld.train.stacked import train_seeds

    torch.set_num_threads(args.threads)
    model_cfg, spec, cfg = setting(ROOT / "params.yaml", args.khop_worker, args.khop_steps, "cpu")
    # the k-hop stage's log_every
    cfg = dataclasses.replace(cfg, threads=args.threads, log_every=50, precision=args.khop_precision,
                              cpu_gemm=args.khop_cpu_gemm,
                              # only when on: a --before tree may predate the setting
                              **({"compile": True} if args.khop_compile == "on" else {}))
    if args.small:
        model_cfg = dataclasses.replace(model_cfg, d_model=32, n_head=2)
    parts = [seed_parts(model_cfg, spec, cfg, seed) for seed in range(args.seeds)]

    class StepEnds(Callback):
        def __init__(self):
            self.ends = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())

    ends = StepEnds()
    with tempfile.TemporaryDirectory() as tmp:
        train_seeds(*map(list, zip(*parts)), Path(tmp) / "run", callbacks=[ends])
    timed = ends.ends[max(1, args.khop_warmup) - 1:]  # from the end of the last warm-up step
    positions = (len(timed) - 1) * args.seeds * cfg.tokens_per_step
    print(json.dumps({"positions_per_s": positions / (timed[-1] - timed[0]),
                      "cpu_gemm": parts[0][0].backend.cpu_gemm, "compile": getattr(cfg, "compile", False)}))


if __name__ == "__main__":
    from vld.errors import run_cli

    run_cli(main)
