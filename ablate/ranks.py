"""The process group of a cell that runs on several processes (launch.processes > 1, ablate/launch.py).

Every helper is a no-op in a single process, where no process group exists: the one-process path never touches
torch.distributed. `from_main`, `all_gather` and `check_replicas` communicate: every rank must call them, in the
same order.
"""

import hashlib
import os

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Rank 0: the one process that writes to the database."""
    return rank_world()[0] == 0


def place(model):
    """`model` on this rank's GPU when a cell runs on several GPUs; unchanged otherwise."""
    if rank_world()[1] > 1 and torch.cuda.is_available():
        return model.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))))
    return model


def from_main(value):
    """Rank 0's `value` on every rank (a decision all ranks must share, e.g. whether to evaluate the base model)."""
    if rank_world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(items: list) -> list:
    """Every rank's `items`, concatenated in rank order, on every rank."""
    world = rank_world()[1]
    if world == 1:
        return items
    parts: list = [None] * world
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def shard(items: list) -> tuple[list, int]:
    """(this rank's contiguous block of `items`, how many of them are real): every rank gets the same number of
    items, the last blocks padded with a repeat, so that all ranks run the same number of generate batches (FSDP
    and ZeRO-3 gather weights inside each forward: a rank with one batch fewer would leave the others waiting).
    `all_gather` of each rank's first `real` results restores the original order."""
    rank, world = rank_world()
    if world == 1 or not items:
        return items, len(items)
    size = -(-len(items) // world)
    block = items[rank * size:(rank + 1) * size]
    return block + [items[0]] * (size - len(block)), len(block)


def replicated() -> bool:
    """Whether every rank holds the whole model (DDP), not a shard of it (FSDP, DeepSpeed ZeRO via accelerate)."""
    return not any(os.environ.get(flag, "").lower() == "true" for flag in ("ACCELERATE_USE_FSDP",
                                                                           "ACCELERATE_USE_DEEPSPEED"))


def weights_digest(model) -> str:
    """sha256 of every parameter's bytes, in order: equal on two ranks iff their weights are bit-identical."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def check_replicas(model) -> str | None:
    """Fail unless every rank's trained weights are bit-identical (DDP keeps replicas in step; a difference means
    the ranks trained different models and their evaluation shards would disagree). Returns the digest, or None
    in one process or when the model is sharded (FSDP, ZeRO-3: every rank holds different shards by design)."""
    rank, world = rank_world()
    if world == 1 or not replicated():
        return None
    digests = all_gather([weights_digest(model)])
    if len(set(digests)) != 1:
        raise RuntimeError("trained weights differ across ranks: " + ", ".join(
            f"rank {r} {d[:12]}" for r, d in enumerate(digests)))
    return digests[0]
