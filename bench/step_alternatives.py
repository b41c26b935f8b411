"""The step's remaining non-GEMM costs against the kernels that would replace them (issue 27).

    .venv/bin/python bench/step_alternatives.py [--threads 2] [--repeats 60]

Each candidate changes the floating-point result at some shape, so none could be adopted
silently; this measures whether any would be worth a recorded setting (bfloat16 became one). For each shape it
times, forward and backward, the kernel the training step uses and its alternative, alternated
in one process, and prints alternative time / current time (below 1: the alternative is faster)
and the largest differences of their outputs and of their inputs' gradients:

- linear layers of seeds trained together: vld.model.linear.linear under vmap with the library
  `hardware.cpu_gemm: auto` picks for this CPU (with oneDNN, one GEMM per seed, each seed's
  arithmetic that of its own run; with the BLAS, vmap's batched matmul and then the bias added)
  against one batched GEMM over the seeds that starts from the bias (torch.baddbmm, the BLAS:
  with MKL on small layers it can equal the current arithmetic, the columns say where);
- linear layers in bfloat16: the same fp32 linear against it under CPU autocast to bfloat16, as
  `hardware.precision: bf16-mixed` runs it (vld.model.linear.CastLinear, one call per seed), the
  casts of inputs and weights included;
- the MLP's GELU: GPT-2's tanh approximation (the model's, vld.model.transformer.GPT2MLP, as
  Hugging Face's GPT-2 computes it) against the exact (erf) GELU;
- causal attention: vld.model.attention's block-causal kernel against torch's
  scaled_dot_product_attention;
- the loss: F.cross_entropy (vld.train.module.next_token_loss without a mask), whose backward
  fills a [rows, vocab] one-hot gradient for the NLL's backward and reads it again in log-softmax's,
  against OneHotFreeCrossEntropy, which writes softmax / rows and subtracts 1 / rows at each
  target directly. Its loss is F.cross_entropy's bit for bit; its gradient is not: it takes the
  exponential with torch.exp, whose rounding differs from the one inside log-softmax's backward
  kernel (the gradient column shows it).

Shapes: "h2" is the default profile's k-hop model (width 96, 4 heads, 33 positions, batch 64,
3 seeds stacked), "w256" the width-256 model of bench_model.py (sequence 256, batch 16, one
seed; its linear layers have no seeds to batch), "w256s3" that model's layers with 3 seeds
stacked (batch 4 each): there the MLP's second linear layer sums over 1024 inputs, where a
GEMM library may sum in blocks and add the bias between them. Meaningful on an idle machine only; `--shapes h2
--repeats 4` is a smoke test.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.func import vmap

from vld.model.attention import causal_attention
from vld.model.backend import machine_cpu_gemm
from vld.model.linear import linear

# name: (stacked seeds, sequences, positions, width, heads, vocabulary)
SHAPES = {"h2": (3, 64, 33, 96, 4, 10), "w256": (1, 16, 256, 256, 4, 2048), "w256s3": (3, 4, 256, 256, 4, 2048)}


def median_ms(step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def race(current, alternative, repeats: int) -> tuple[float, float, float, float]:
    """(current ms, alternative ms, max |difference| of their outputs, of their inputs' gradients):
    warmed up, then the two timed in alternating rounds so load hits them alike."""
    difference = (current(grad=False) - alternative(grad=False)).abs().max().item()
    current()
    grads = [tensor.grad.clone() for tensor in current.inputs]
    alternative()
    grad_difference = max((tensor.grad - grad).abs().max().item() for tensor, grad in zip(alternative.inputs, grads))
    for fn in (current, alternative):
        for _ in range(3):
            fn()
    rounds, per_round = 4, max(1, repeats // 4)
    totals = [[], []]
    for _ in range(rounds):
        for i, fn in enumerate((current, alternative)):
            totals[i].append(median_ms(fn, per_round))
    return min(totals[0]), min(totals[1]), difference, grad_difference


def training_step(forward, inputs, grad_out):
    """A callable running forward (and, unless grad=False, backward with grad_out); returns the output.
    The inputs' gradients are dropped first, as a training step starts with none (no accumulation)."""
    def step(grad: bool = True):
        if not grad:
            with torch.no_grad():
                return forward(*inputs)
        for tensor in inputs:
            tensor.grad = None
        out = forward(*inputs)
        out.backward(grad_out)
        return out
    step.inputs = inputs  # race compares their gradients
    return step


def layer_operands(seed: int, seeds, rows, width):
    """(in, out, x, w, b, grad_out) of a block's four linear layers, stacked over `seeds`."""
    generator = torch.Generator().manual_seed(seed)
    for fan_in, fan_out in ((width, 3 * width), (width, width), (width, 4 * width), (4 * width, width)):
        x = torch.randn(seeds, rows, fan_in, generator=generator, requires_grad=True)
        w = (torch.randn(seeds, fan_out, fan_in, generator=generator) * fan_in ** -0.5).requires_grad_()
        b = torch.randn(seeds, fan_out, generator=generator, requires_grad=True)  # trained biases are not 0
        grad_out = torch.randn(seeds, rows, fan_out, generator=generator)
        yield fan_in, fan_out, x, w, b, grad_out


def stacked_linear(cpu_gemm: str):
    """vld.model.linear.linear over stacked seeds, as a stacked model's layer runs it."""
    return vmap(lambda x, w, b: linear(x, w, b, cpu_gemm))


def linear_rows(seeds, batch, seq, width, cpu_gemm: str):
    per_seed_linear = stacked_linear(cpu_gemm)
    for fan_in, fan_out, x, w, b, grad_out in layer_operands(0, seeds, batch * seq, width):
        batched = training_step(lambda x, w, b: torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)), (x, w, b), grad_out)
        yield (f"linear {fan_in}->{fan_out} ({seeds * batch * seq} rows)",
               training_step(per_seed_linear, (x, w, b), grad_out), batched)


def bfloat16_rows(seeds, batch, seq, width, cpu_gemm: str):
    per_seed_linear = stacked_linear(cpu_gemm)

    def autocast_linear(x, w, b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return per_seed_linear(x, w, b)
    for fan_in, fan_out, x, w, b, grad_out in layer_operands(3, seeds, batch * seq, width):
        yield (f"linear {fan_in}->{fan_out} in bfloat16", training_step(per_seed_linear, (x, w, b), grad_out),
               training_step(autocast_linear, (x, w, b), grad_out))


def gelu_rows(seeds, batch, seq, width):
    generator = torch.Generator().manual_seed(1)
    h = torch.randn(seeds, batch * seq, 4 * width, generator=generator, requires_grad=True)
    grad_out = torch.randn(h.shape, generator=generator)
    yield ("GELU", training_step(lambda t: F.gelu(t, approximate="tanh"), (h,), grad_out),
           training_step(F.gelu, (h,), grad_out))


def attention_rows(seeds, batch, seq, width, heads):
    generator = torch.Generator().manual_seed(2)
    rows = seeds * batch
    qkv = torch.randn(3, rows, heads, seq, width // heads, generator=generator, requires_grad=True)
    grad_out = torch.randn(rows, seq, width, generator=generator)

    def sdpa(qkv):
        q, k, v = qkv
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(rows, seq, width)
    yield "attention", training_step(causal_attention, (qkv,), grad_out), training_step(sdpa, (qkv,), grad_out)


class OneHotFreeCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits [rows, vocab] at targets [rows], its gradient written as
    softmax / rows with 1 / rows taken off at each target: no [rows, vocab] one-hot in between."""

    @staticmethod
    def forward(ctx, logits, targets):
        log_probs = torch.log_softmax(logits, -1)
        ctx.save_for_backward(log_probs, targets)
        return F.nll_loss(log_probs, targets)

    @staticmethod
    def backward(ctx, grad_loss):
        log_probs, targets = ctx.saved_tensors
        share = grad_loss / log_probs.shape[0]
        grad = log_probs.exp().mul_(share)
        grad[torch.arange(len(targets)), targets] -= share
        return grad, None


def loss_rows(seeds, batch, seq, vocab):
    generator = torch.Generator().manual_seed(4)
    rows = seeds * batch * seq
    logits = torch.randn(rows, vocab, generator=generator, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    grad_out = torch.ones(())
    yield (f"loss ({rows} rows x {vocab})", training_step(lambda t: F.cross_entropy(t, targets), (logits,), grad_out),
           training_step(lambda t: OneHotFreeCrossEntropy.apply(t, targets), (logits,), grad_out))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=60, help="timed calls per kernel (in 4 alternating rounds)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    args = parser.parse_args(argv)
    shapes = args.shapes.split(",")
    if unknown := [name for name in shapes if name not in SHAPES]:
        parser.error(f"--shapes: unknown {', '.join(unknown)}; expected some of {', '.join(SHAPES)}")
    torch.set_num_threads(args.threads)
    # training on CPU runs in deterministic mode (vld.train.run.fit): time the kernels as it runs them
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    cpu_gemm = machine_cpu_gemm()
    print(f"# cpu_gemm auto: {cpu_gemm}; {args.threads} threads, median of {args.repeats // 4} calls, best of 4 alternating rounds;"
          " forward + backward")
    print("| shape | kernel | current ms | alternative ms | alternative / current | max abs difference"
          " | max abs gradient difference |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for shape in shapes:
        seeds, batch, seq, width, heads, vocab = SHAPES[shape]
        groups = {"batched over seeds": linear_rows(seeds, batch, seq, width, cpu_gemm) if seeds > 1 else (),
                  "in bfloat16": bfloat16_rows(seeds, batch, seq, width, cpu_gemm),
                  None: [*gelu_rows(seeds, batch, seq, width), *attention_rows(seeds, batch, seq, width, heads),
                         *loss_rows(seeds, batch, seq, vocab)]}
        for group, rows in groups.items():
            summed = [0.0, 0.0]
            for label, current, alternative in rows:
                now, alt, difference, grad_difference = race(current, alternative, args.repeats)
                summed[0] += now
                summed[1] += alt
                print(f"| {shape} | {label} | {now:.2f} | {alt:.2f} | {alt / now:.2f} | {difference:.1e}"
                      f" | {grad_difference:.1e} |", flush=True)
            if group and summed[0]:
                print(f"| {shape} | a layer's four linears {group} | {summed[0]:.2f} | {summed[1]:.2f} |"
                      f" {summed[1] / summed[0]:.2f} | | |")


if __name__ == "__main__":
    main()
