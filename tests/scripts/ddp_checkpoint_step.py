"""One DDP training step of a cycled VLD model with activation checkpointing (2 CPU ranks).

Run under torchrun by tests/test_model_ddp.py:
    python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_checkpoint_step.py OUT.pt
Rank 0 writes the initial weights, the batch, the averaged gradients and the updated weights.
"""

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from vld.model import Backend, ModelConfig, VLDTransformer


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=53, n_layer=2, d_model=32, n_head=4, max_seq_len=32,
                         schedule=[0, 1, 0, 1, 0, 1])
    model = VLDTransformer(config, backend=Backend(activation_checkpointing=True)).double()
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    batch = torch.randint(0, 53, (4, 17), generator=torch.Generator().manual_seed(1))
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    shard = batch.chunk(world)[rank]
    logits = ddp(shard[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), shard[:, 1:].flatten()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    optimizer.step()
    # every rank must hold the same weights after the step
    for p in model.parameters():
        gathered = [torch.empty_like(p) for _ in range(world)]
        dist.all_gather(gathered, p.detach())
        assert all(torch.equal(gathered[0], g) for g in gathered), "ranks diverged"
    if rank == 0:
        torch.save({"initial": initial, "batch": batch, "grads": grads,
                    "updated": {n: p.detach().clone() for n, p in model.named_parameters()}}, out_path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
