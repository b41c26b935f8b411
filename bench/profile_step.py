"""Where a training step's time goes: a markdown table of shares per op category, for the
paper-shaped model and the default profile's k-hop models, trained through the real Lightning
fit path (vld.train.run.run_training / vld.train.stacked.train_seeds), and the same step in a
plain loop (no Trainer) for Lightning's own cost.

    .venv/bin/python bench/profile_step.py                       # all models; paste the output
    .venv/bin/python bench/profile_step.py --models h2 --steps 4 --warmup 1   # a smoke test
    PYTHONPATH=/tmp/before/src .venv/bin/python bench/profile_step.py --cpu-gemm onednn
        # another tree's src/ (git archive REV src | tar -x -C /tmp/before), with oneDNN's GEMMs
    .venv/bin/python bench/profile_step.py --models h2,h4 --precision bf16-mixed   # CPU bfloat16

Models: w256 (width 256, 4 layers, 4 heads, sequence 256, batch 16, vocab 2048: the
bench/bench_model.py model, one seed, on token windows), h2 and h4 (params.yaml's k-hop models
on their data set with the khop train block (default profile: 64 sequences of 33 positions), `--seeds` seeds stacked as the
pipeline trains them), k32 (the knowledge family's w32: width 32, 2 layers, 32 windows of 128
tokens over a 64-token vocabulary, `--seeds` seeds stacked).

Table 1 (torch.profiler over `--steps` steps after `--warmup`): each op's own time goes to the
innermost labelled range around it: forward ranges from module hooks (linear layers, attention,
norms, MLP activation, embeddings), the loss function, backward by autograd node (the node that
computes a linear layer's gradients counts as GEMMs, and so on), the optimizer's step and
zero_grad, gradient clipping, the data loader. "Python, Lightning, untraced" is the step's wall
time outside every op. The profiler slows small ops, so shares are its view; ms/step figures
mean something on an idle machine only.
Table 2 (no profiler): seconds per step of the Lightning fit against the plain loop
(forward, loss, backward, clipping, AdamW, lr schedule, zero_grad over the same batches); the
difference is what the Trainer, its callbacks, logging and progress bar add to each step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

MODELS = ("w256", "h2", "h4", "k32")
CASTS = "linear layers' casts (bf16-mixed)"
CATEGORIES = ("GEMMs (linear layers)", CASTS, "seed stacking (vmap copies)", "attention", "norms", "activation", "embeddings", "residual adds", "loss",
              "optimizer", "zero_grad", "gradient clipping", "loss logging", "data", "allocator (new tensors)", "other ops",
              "Python, Lightning, untraced")
# forward: module class name -> category (the innermost labelled module owns an op)
FORWARD = {"Linear": "GEMMs (linear layers)", "Attention": "attention", "LayerNorm": "norms", "RMSNorm": "norms",
           "GPT2MLP": "activation", "SwiGLU": "activation", "Embedding": "embeddings", "GPT2Block": "residual adds",
           "LlamaBlock": "residual adds"}
# backward: an autograd node goes where the forward op that made it ran (the profiler's
# sequence number links the two), so a stacked linear layer's BmmBackward (cpu_gemm blas under
# vmap) counts as GEMMs and not as attention; this table names the category of a node whose
# forward op was not seen, and the seed-stacking nodes, which run inside the linear layers.
SEED_STACKING_NODES = {"Unbind"}
BACKWARD = {"OneDNNLinear": "GEMMs (linear layers)", "Addmm": "GEMMs (linear layers)", "Mm": "GEMMs (linear layers)",
            "Linear": "GEMMs (linear layers)", "T": "GEMMs (linear layers)",
            "BlockCausalAttention": "attention", "ScaledDotProduct": "attention", "Permute": "attention",
            # the stacked seeds' input gradients stacked again after OneDNNLinear.vmap's per-seed calls
            "Unbind": "seed stacking (vmap copies)", "NativeLayerNorm": "norms", "Gelu": "activation", "Silu": "activation",
            "Embedding": "embeddings", "Add": "residual adds", "NllLoss": "loss", "LogSoftmax": "loss",
            "Mul": "loss", "Sum": "loss", "Div": "loss", "Mean": "loss", "Stack": "loss", "Select": "loss",
            "Clamp": "loss", "Bmm": "attention"}
EVALUATE = "autograd::engine::evaluate_function: "
# ops that only allocate: their own time is the allocator's, wherever they run (the first
# write's page faults land in the kernel that writes; table 2 counts them)
ALLOCATION = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty", "aten::new_empty_strided",
              "aten::resize_"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--steps", type=int, default=20, help="profiled / timed steps per model")
    parser.add_argument("--warmup", type=int, default=5, help="steps before the profiled ones")
    parser.add_argument("--seeds", type=int, default=3, help="k-hop seeds trained together (params.yaml: 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-gemm", default="auto",
                        help="hardware.cpu_gemm of every model: auto (this CPU's library), onednn or blas")
    parser.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed"),
                        help="hardware.precision of every model (bf16-mixed: the plain loop runs the "
                             "forward under CPU autocast, as Lightning does)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--small", action="store_true", help="tiny shapes (a smoke test of the tool only)")
    parser.add_argument("--unattributed", action="store_true",
                        help="also list the ops that fell into 'other ops' (to extend the category map)")
    return parser.parse_args(argv)


@dataclasses.dataclass
class Setting:
    name: str
    models: list  # one per seed
    datamodules: list
    cfgs: list

    def positions_per_step(self) -> int:
        return len(self.models) * self.cfgs[0].tokens_per_step


def build(name: str, args, work: Path) -> Setting:
    """The models, data and train configs of `name`, as the pipeline (or bench_model) builds them."""
    import numpy as np
    import torch

    from vld.model import ModelConfig, VLDTransformer
    from vld.train.config import TrainConfig

    steps = args.warmup + args.steps
    if name == "w256":
        from vld.data.tokens import write_token_set
        from vld.train.datamodules import TokenWindowDataModule

        width, seq, batch, vocab = (64, 32, 4, 256) if args.small else (256, 256, 16, 2048)
        tokens = np.random.default_rng(0).integers(0, vocab, size=max(200_000, 2 * steps * batch * (seq + 1)))
        data = write_token_set(work / "tokens", tokens, np.array([0, len(tokens)]), vocab, {"generator": "bench"})
        cfg = TrainConfig(max_steps=steps, global_batch_size=batch, micro_batch_size=batch, seq_len=seq,
                          threads=args.threads, log_every=50, cpu_gemm=args.cpu_gemm,
                          precision=args.precision)
        torch.manual_seed(0)
        model = VLDTransformer(ModelConfig(vocab_size=vocab, n_layer=4, d_model=width, n_head=4, max_seq_len=seq),
                               backend=cfg.backend)
        return Setting(name, [model], [TokenWindowDataModule(data, seq, batch, seed=0)], [cfg])
    if name == "k32":
        return knowledge(args, work, steps)
    from bench_seeds import seed_parts, setting

    model_cfg, spec, cfg = setting(args.params, name, steps, "cpu")
    cfg = dataclasses.replace(cfg, threads=args.threads, log_every=_khop_log_every(args.params),
                              cpu_gemm=args.cpu_gemm, precision=args.precision)
    if args.small:
        model_cfg = dataclasses.replace(model_cfg, d_model=32, n_head=2)
    parts = [seed_parts(model_cfg, spec, cfg, seed) for seed in range(args.seeds)]
    return Setting(name, *map(list, zip(*parts)))


def knowledge(args, work: Path, steps: int) -> Setting:
    """The knowledge family's w32 variant: params.yaml's k32 model and knowledge train block on
    windows of rt16k-shaped data (16,384 random tokens over 64 values), its seeds stacked."""
    import numpy as np
    import torch
    import yaml

    from vld.data.tokens import write_token_set
    from vld.model import ModelConfig, VLDTransformer
    from vld.train.config import TrainConfig
    from vld.train.datamodules import TokenWindowDataModule

    raw = yaml.safe_load(args.params.read_text())
    vocab = 64
    tokens = np.random.default_rng(0).integers(0, vocab, size=16_384)
    data = write_token_set(work / "tokens", tokens, np.array([0, len(tokens)]), vocab, {"generator": "bench"})
    train = {**raw.get("hardware", {}), **raw["knowledge"]["train"], "max_steps": steps, "checkpoint_every": 0,
             "threads": args.threads, "cpu_gemm": args.cpu_gemm, "precision": args.precision}
    models, datamodules, cfgs = [], [], []
    for seed in range(args.seeds):
        cfg = TrainConfig.from_dict({**train, "seed": seed})
        torch.manual_seed(seed)
        models.append(VLDTransformer(ModelConfig(**raw["models"]["k32"], vocab_size=vocab), backend=cfg.backend))
        datamodules.append(TokenWindowDataModule(data, cfg.seq_len, cfg.micro_batch_size, seed=seed))
        cfgs.append(cfg)
    return Setting("k32", models, datamodules, cfgs)


def _khop_log_every(params: Path) -> int:
    """The k-hop stage's log_every (bench_seeds' setting logs once per run)."""
    import yaml

    return int(yaml.safe_load(params.read_text())["khop"]["train"].get("log_every", 1))


def fit(setting: Setting, out_dir: Path, callbacks=()):
    """The real training path: train_seeds (one seed: run_training), returns nothing."""
    from vld.train.stacked import train_seeds

    with contextlib.redirect_stderr(open(os.devnull, "w")):  # the progress bar
        train_seeds(setting.models, setting.datamodules, setting.cfgs, out_dir, callbacks=list(callbacks))


class Labels:
    """record_function ranges around the forward of every module of a FORWARD class and around
    the loss, gradient clipping and data fetching (patched while installed)."""

    def __init__(self):
        self.handles, self.patches = [], []
        # autograd node sequence number -> the innermost labelled module that made the node. The
        # profiler links most backward nodes to their forward op by sequence number, but not the
        # ops vmap decomposes a batched call into (a stacked LayerNorm's weight and bias, a
        # stacked linear layer's bias under cpu_gemm blas): walking each module's output graph
        # back to its input finds those too.
        self.node_labels: dict[int, str] = {}

    def label_nodes(self, node, floor: int, label: str) -> None:
        """Label every node made after sequence number `floor` that `node` reaches; the inner
        modules' hooks ran first, so their nodes keep their own labels."""
        stack, seen = [node], set()
        while stack:
            node = stack.pop()
            seq = node_seq(node)
            if seq <= floor or id(node) in seen:
                continue
            seen.add(id(node))
            self.node_labels.setdefault(seq, label)
            stack.extend(next_node for next_node, _ in node.next_functions)

    def install(self, models) -> None:
        import torch
        from torch.autograd.profiler import record_function

        import vld.train.module as module_py
        import vld.train.stacked as stacked_py
        from vld.train.module import LMModule
        from vld.train.stacked import StackedLMModule

        for model in models:
            for module in model.modules():
                label = FORWARD.get(type(module).__name__)
                if label is None:
                    continue
                stack = []

                def pre(mod, inputs, label=label, stack=stack):
                    floor = max((node_seq(graph_node(x)) for x in inputs if isinstance(x, torch.Tensor)), default=-1)
                    stack.append((record_function(f"vld::{label}").__enter__(), floor))

                def post(mod, inputs, output, label=label, stack=stack):
                    span, floor = stack.pop()
                    span.__exit__(None, None, None)
                    if isinstance(output, torch.Tensor):
                        self.label_nodes(graph_node(output), floor, label)

                self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

        def labelled(fn, label):
            def wrapper(*a, **k):
                with record_function(f"vld::{label}"):
                    return fn(*a, **k)
            return wrapper

        loader_iter = torch.utils.data.dataloader._SingleProcessDataLoaderIter
        # Lightning runs training_step and backward in a closure inside Optimizer.step: without
        # their own range, their unlabelled ops would count as the optimizer's
        for owner, attr, label in ((module_py, "next_token_loss", "loss"), (stacked_py, "next_token_loss", "loss"),
                                   (LMModule, "training_step", "other ops"), (StackedLMModule, "training_step", "other ops"),
                                   (LMModule, "backward", "other ops"),
                                   (LMModule, "on_before_optimizer_step", "loss logging"),
                                   (StackedLMModule, "on_before_optimizer_step", "loss logging"),
                                   (LMModule, "configure_gradient_clipping", "gradient clipping"),
                                   (StackedLMModule, "configure_gradient_clipping", "gradient clipping"),
                                   (loader_iter, "_next_data", "data")):
            original = owner.__dict__.get(attr, getattr(owner, attr))
            self.patches.append((owner, attr, original))
            setattr(owner, attr, labelled(original, label))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for owner, attr, original in reversed(self.patches):
            setattr(owner, attr, original)
        self.handles, self.patches = [], []


def graph_node(tensor):
    """The autograd node that made `tensor`, through vmap's batched wrappers (None: a leaf)."""
    import torch

    while torch._C._functorch.is_batchedtensor(tensor):
        tensor = torch._C._functorch.get_unwrapped(tensor)
    return tensor.grad_fn


def node_seq(node) -> int:
    """A node's sequence number; -1 for none and for AccumulateGrad (a parameter's, made before
    any step, numbered last)."""
    if node is None or type(node).__name__ == "AccumulateGrad":
        return -1
    return node._sequence_nr()


def category_of(event, forward_of: dict[int, str]) -> str | None:
    """The category a labelled range names (None: not a labelled range); `forward_of` maps a
    forward op's sequence number to its category (see forward_categories)."""
    name = event.name
    if name.startswith("vld::"):
        return name[5:]
    if name.startswith(EVALUATE):
        node = name[len(EVALUATE):].rsplit("::", 1)[-1]
        if node == "AccumulateGrad":
            return "optimizer"  # gradients accumulated into .grad: the optimizer's input
        node = node.rstrip("0123456789")
        node = node[: -len("Backward")] if node.endswith("Backward") else node
        if node in SEED_STACKING_NODES:
            return BACKWARD[node]
        label = forward_of.get(event.sequence_nr) or BACKWARD.get(node, "other ops")
        return CASTS if node == "ToCopy" and label == "GEMMs (linear layers)" else label
    if name.startswith("Optimizer.step"):
        return "optimizer"
    if name.startswith("Optimizer.zero_grad"):
        return "zero_grad"
    if name.startswith("ProfilerStep"):  # the whole step: its own time is outside every op
        return "Python, Lightning, untraced"
    return None


def forward_categories(events) -> dict[int, str]:
    """sequence number -> category of the innermost labelled range around the first op that
    carries it: the forward op autograd made that node for (its backward events come later)."""
    forward_of = {}
    for event in events:
        if event.sequence_nr < 0 or event.sequence_nr in forward_of:
            continue
        where = event
        while where is not None and not where.name.startswith(("vld::", EVALUATE)):
            where = where.cpu_parent
        if where is not None and where.name.startswith("vld::"):  # not a backward node's own range
            forward_of[event.sequence_nr] = where.name[5:]
    return forward_of


def attribute(events, node_labels: dict[int, str] | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Self CPU microseconds per category (each event to its innermost labelled range; ops with
    none: "other ops"), and the unattributed ops' own times by name. `node_labels`: Labels'
    node_labels, ahead of the profiler's own links."""
    shares, other = defaultdict(float), defaultdict(float)
    forward_of = {**forward_categories(events), **(node_labels or {})}
    for event in events:
        own = event.self_cpu_time_total
        if not own:
            continue
        where, label, cast = event, None, False
        while where is not None and label is None:
            label = category_of(where, forward_of)
            cast = cast or where.name == "aten::_to_copy"
            where = where.cpu_parent
        if label is None:
            label = "other ops"
        if label == "GEMMs (linear layers)" and event.name in ("aten::cat", "aten::stack"):
            label = "seed stacking (vmap copies)"  # OneDNNLinear.vmap stacking the seeds' outputs
        if label == "GEMMs (linear layers)" and cast:
            label = CASTS  # bf16-mixed: vld.model.linear casting its operands
        if event.name in ALLOCATION:
            label = "allocator (new tensors)"
        if label == "other ops":
            other[event.name] += own
        shares[label] += own
    return shares, other


class StepClock:
    """A Lightning callback: wall seconds of each training batch and, with a profiler, its step()."""

    def __new__(cls, *args, **kwargs):
        from lightning.pytorch.callbacks import Callback

        class _Clock(Callback):
            def __init__(self, profiler=None, skip: int = 0):
                self.profiler, self.skip, self.times, self.faults, self._start = profiler, skip, [], [], 0.0

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                self._faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                self._start = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                self.times.append(time.perf_counter() - self._start)
                self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self._faults)
                if self.profiler is not None:
                    self.profiler.step()

            def step_s(self) -> float:
                timed = self.times[self.skip:]
                return sum(timed) / max(1, len(timed))

            def faults_per_step(self) -> float:
                counted = self.faults[self.skip:]
                return sum(counted) / max(1, len(counted))

        return _Clock(*args, **kwargs)


def profile(name: str, args, work: Path) -> tuple[dict[str, float], float, dict[str, float]]:
    """(microseconds per step by category, positions per step, unattributed ops) of `name`'s fit."""
    from torch.profiler import ProfilerActivity, schedule
    from torch.profiler import profile as torch_profile

    setting = build(name, args, work / "data")
    labels = Labels()
    labels.install([setting.models[0]] if len(setting.models) == 1 else [])
    with torch_profile(activities=[ProfilerActivity.CPU],
                       schedule=schedule(wait=0, warmup=args.warmup, active=args.steps, repeat=1)) as prof:
        clock = StepClock(prof, skip=args.warmup)
        # the stacked model is built inside train_seeds: its modules get their hooks in setup
        if len(setting.models) > 1:
            clock.setup = lambda trainer, pl_module, stage: labels.install([pl_module.model.net])
        try:
            fit(setting, work / "profiled", [clock])
        finally:
            labels.remove()
    shares, other = attribute(prof.events(), labels.node_labels)
    steps = args.steps
    per_step = {label: us / steps for label, us in shares.items()}
    return per_step, setting.positions_per_step(), {k: v / steps for k, v in other.items()}


def plain_step_s(name: str, args, work: Path) -> tuple[float, float, float]:
    """(seconds per step of the Lightning fit, of a plain loop over the same batches, the fit's
    minor page faults per step)."""
    import torch

    from vld.train.config import apply_threads
    from vld.train.module import LMModule, lr_factor
    from vld.train.stacked import StackedLMModule, StackedModel, clip_grad_norm_per_model

    setting = build(name, args, work / "data-a")
    clock = StepClock(skip=args.warmup)
    batches = []

    def keep(trainer, pl_module, outputs, batch, batch_idx, inner=clock.on_train_batch_end):
        batches.append(batch)
        inner(trainer, pl_module, outputs, batch, batch_idx)

    clock.on_train_batch_end = keep
    fit(setting, work / "timed", [clock])

    fresh = build(name, args, work / "data-b")
    cfg = fresh.cfgs[0]
    apply_threads(cfg)
    if len(fresh.models) == 1:
        module = LMModule(fresh.models[0], cfg.optim, cfg.max_steps)
    else:
        module = StackedLMModule(StackedModel(fresh.models), fresh.models[0], cfg.optim, cfg.max_steps,
                                 [c.seed for c in fresh.cfgs])
    optimizer = torch.optim.AdamW(module.optimizer_groups(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  eps=cfg.optim.eps)
    warmup = cfg.optim.warmup_steps(cfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.max_steps, warmup, cfg.optim.min_lr_ratio))
    times = []
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed"):
            loss = module.training_step(batch, index)
        loss.backward()
        if cfg.optim.grad_clip:
            if len(fresh.models) == 1:
                torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.optim.grad_clip)
            else:
                clip_grad_norm_per_model(module.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        module._micro_losses.clear()
        times.append(time.perf_counter() - start)
    timed = times[args.warmup:]
    return clock.step_s(), sum(timed) / max(1, len(timed)), clock.faults_per_step()


def main(argv=None) -> None:
    args = parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = set(names) - set(MODELS)
    if unknown:
        from vld.errors import fail

        fail("--models", f"unknown model {sorted(unknown)[0]!r} (known: {', '.join(MODELS)})")
    from bench_model import cpu_name
    from vld.model.backend import resolve_cpu_gemm

    cpu_gemm = resolve_cpu_gemm(args.cpu_gemm, "--cpu-gemm")  # a typo fails before any model trains
    os.environ["VLD_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    results, timings, unattributed = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            results[name] = profile(name, args, Path(tmp) / f"{name}-profile")
            timings[name] = plain_step_s(name, args, Path(tmp) / f"{name}-plain")
            unattributed[name] = results[name][2]
    print(f"CPU: {cpu_name()}; cpu_gemm {cpu_gemm}; {args.precision}; {args.threads} threads;"
          f" {args.steps} steps after {args.warmup}; k-hop: {args.seeds} seeds stacked"
          + ("; --small shapes" if args.small else ""))
    print()
    header = " | ".join(f"{name} ms | {name} %" for name in names)
    print(f"| category | {header} |")
    print("|---|" + "---:|" * (2 * len(names)))
    totals = {name: sum(results[name][0].values()) for name in names}
    for label in CATEGORIES:
        cells = []
        for name in names:
            us = results[name][0].get(label, 0.0)
            cells.append(f"{us / 1e3:.2f} | {100 * us / totals[name]:.1f}")
        print(f"| {label} | {' | '.join(cells)} |")
    print(f"| step (profiled) | {' | '.join(f'{totals[n] / 1e3:.2f} | 100.0' for n in names)} |")
    print()
    print("| model | positions/step | Lightning s/step | plain loop s/step | Lightning's share | positions/s (Lightning) "
          "| page faults/step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        fit_s, plain_s, faults = timings[name]
        positions = results[name][1]
        print(f"| {name} | {positions} | {fit_s:.4f} | {plain_s:.4f} | {100 * (fit_s - plain_s) / fit_s:.1f}% |"
              f" {positions / fit_s:,.0f} | {faults:,.0f} |")
    if args.unattributed:
        for name in names:
            print(f"\n{name}: other ops (us/step)")
            for op, us in sorted(unattributed[name].items(), key=lambda kv: -kv[1])[:15]:
                print(f"  {op}: {us:.0f}")


if __name__ == "__main__":
    from vld.errors import run_cli

    run_cli(main)
