"""bench/profile_step.py's attribution (issue 27): a backward node counts where the forward op
that made it ran, so a stacked linear layer's batched matmul (cpu_gemm blas under vmap) is a
GEMM, not attention, although both leave a BmmBackward node; the nodes vmap makes of a stacked
LayerNorm and linear layer count as theirs."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.profiler import record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import profile_step  # noqa: E402

GEMMS, ATTENTION = "GEMMs (linear layers)", "attention"


def test_each_bmm_backward_goes_to_the_range_its_forward_ran_in():
    x = torch.randn(3, 8, 4, requires_grad=True)  # 3 stacked seeds
    weight = torch.randn(3, 5, 4, requires_grad=True)
    with torch.profiler.profile() as prof:
        with record_function(f"vld::{GEMMS}"):
            y = torch.func.vmap(F.linear)(x, weight)  # batched over the seeds: a bmm
        with record_function(f"vld::{ATTENTION}"):
            scores = torch.bmm(y, y.transpose(1, 2))
        scores.sum().backward()
    events = prof.events()
    forward_of = profile_step.forward_categories(events)
    bmm_nodes = [e for e in events if e.name == profile_step.EVALUATE + "BmmBackward0"]
    assert len(bmm_nodes) == 2
    assert sorted(profile_step.category_of(e, forward_of) for e in bmm_nodes) == [GEMMS, ATTENTION]
    # the node's name alone (the table's guess) would have put both in attention
    assert profile_step.category_of(bmm_nodes[0], {}) == ATTENTION


def test_a_backward_call_inside_a_range_keeps_each_node_where_its_forward_ran():
    x = torch.randn(4, 4, requires_grad=True)
    with torch.profiler.profile() as prof:
        with record_function("vld::loss"):  # the backward call runs inside this range too
            with record_function(f"vld::{GEMMS}"):
                y = x @ x
            y.sum().backward()
    events = prof.events()
    forward_of = profile_step.forward_categories(events)
    nodes = {e.name[len(profile_step.EVALUATE):]: profile_step.category_of(e, forward_of)
             for e in events if e.name.startswith(profile_step.EVALUATE)}
    assert nodes["MmBackward0"] == GEMMS
    assert nodes["SumBackward0"] == "loss"


def test_the_linear_layers_casts_are_apart_from_their_gemms():
    x = torch.randn(16, 8, requires_grad=True)
    weight = torch.randn(4, 8, requires_grad=True)
    with torch.profiler.profile() as prof:
        with record_function(f"vld::{GEMMS}"):  # a linear layer casting its operands (bf16-mixed)
            y = F.linear(x.to(torch.bfloat16), weight.to(torch.bfloat16))
        y.float().sum().backward()
    events = prof.events()
    forward_of = profile_step.forward_categories(events)
    nodes = [profile_step.category_of(e, forward_of) for e in events
             if e.name == profile_step.EVALUATE + "ToCopyBackward0"]
    # the operands' two casts are the linear layer's; the loss's cast back is not in any range
    assert nodes.count(profile_step.CASTS) == 2
    shares, _ = profile_step.attribute(events)
    assert shares[profile_step.CASTS] > 0 and shares[GEMMS] > 0


def test_the_ops_vmap_decomposes_a_stacked_call_into_count_for_the_module_that_made_them():
    """Under vmap a stacked LayerNorm runs as a normalisation, a multiply and an add, and a stacked
    linear layer as a matmul and an add (cpu_gemm blas): the profiler links no forward op to
    those Mul/Add nodes, and the node names alone would call them the loss's and the residual
    adds'. Labels walks each module's output graph and finds them."""
    from torch import nn

    net = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 5))
    params = {name: torch.stack([p.detach() + 0.1 * seed for seed in range(3)]).requires_grad_()
              for name, p in net.named_parameters()}
    x = torch.randn(3, 8, 4, requires_grad=True)
    labels = profile_step.Labels()
    labels.install([net])
    try:
        with torch.profiler.profile() as prof:
            y = torch.func.vmap(lambda p, x: torch.func.functional_call(net, p, (x,)))(params, x)
            y.sum().backward()
    finally:
        labels.remove()
    events = prof.events()

    def nodes(forward_of):
        return {(e.name[len(profile_step.EVALUATE):], profile_step.category_of(e, forward_of))
                for e in events if e.name.startswith(profile_step.EVALUATE)}

    walked = nodes({**profile_step.forward_categories(events), **labels.node_labels})
    assert {("MulBackward0", "norms"), ("AddBackward0", "norms"), ("AddBackward0", GEMMS)} <= walked
    # every node but the sum taken as the loss and the parameters' AccumulateGrad is one of the two modules'
    assert {label for node, label in walked if node != "SumBackward0" and not node.endswith("AccumulateGrad")} == {
        "norms", GEMMS}
    linked = nodes(profile_step.forward_categories(events))  # the profiler's links alone
    assert ("MulBackward0", "norms") not in linked


def test_the_cpu_line_names_an_older_src_without_vld_machine(monkeypatch):
    """The documented "before" run puts an older tree's src/ (75db141, before vld.machine) first
    on PYTHONPATH: the header line must not crash the run after its models have trained."""
    import bench_model

    assert "predates vld.machine" not in bench_model.cpu_name()  # this tree: vld.machine's label
    monkeypatch.setitem(sys.modules, "vld.machine", None)  # `from vld.machine import ...` raises ImportError
    assert "predates vld.machine" in bench_model.cpu_name()
