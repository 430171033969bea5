"""Distributed training on torchrun: process-group init, DDP, FSDP2 ``fully_shard``, small helpers.

Launch with ``torchrun --nproc-per-node N -m clipfast.train ...`` (or ``python -m
torch.distributed.run``); the env vars it sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) are read here. NCCL on CUDA devices, gloo on CPU. SLURM's
``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` work too when ``MASTER_ADDR``/``MASTER_PORT`` are set.
"""
import dataclasses
import gc
import logging
import os

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def _env_int(*names, default=0) -> int:
    for n in names:
        if n in os.environ:
            return int(os.environ[n])
    return default


def init_distributed(device: str = "auto", backend: "str | None" = None) -> DistInfo:
    """Read torchrun/SLURM env, pick the device, and init the process group when world size > 1.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``; with several
            processes on CUDA each takes ``cuda:LOCAL_RANK``.
        backend: process-group backend; default NCCL on CUDA, gloo on CPU.
    Returns:
        DistInfo(rank, world_size, local_rank, device).
    """
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but torch.cuda.is_available() is False")
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    info = DistInfo(rank, world, local_rank, dev)
    if world > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world)
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                device_id=dev if dev.type == "cuda" else None)
        log.info("process group %s: rank %d of %d on %s", backend, rank, world, dev)
    return info


def cleanup() -> None:
    """Destroy the process group and free its finished work objects now, while the interpreter is alive.

    A gloo worker thread that frees the last reference to a finished collective's work during interpreter
    finalisation needs the GIL, is ended by ``pthread_exit`` inside a ``noexcept`` destructor and aborts the
    process (``terminate called without an active exception``, SIGABRT) — measured 9 runs in 20 with a
    torch-only script; 0 in 20 with this ``gc.collect()`` after ``destroy_process_group()``.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()


def shard_modules(model: torch.nn.Module) -> list:
    """Modules FSDP2 wraps one by one: ``model.fsdp_shard_modules()`` if defined, else every
    ``ResidualAttentionBlock`` / ``Bottleneck`` (OpenCLIP's rule)."""
    if hasattr(model, "fsdp_shard_modules"):
        return list(model.fsdp_shard_modules())
    names = ("ResidualAttentionBlock", "Bottleneck")
    return [m for m in model.modules() if type(m).__name__ in names]


def wrap_model(model: torch.nn.Module, info: DistInfo, mode: str = "ddp", static_graph: bool = False,
               mixed_precision: "torch.dtype | None" = None) -> torch.nn.Module:
    """Wrap for data parallelism; a no-op for a single process.

    Args:
        mode: ``"ddp"`` (``DistributedDataParallel``) or ``"fsdp"`` (FSDP2 ``fully_shard`` on each
            block from :func:`shard_modules`, then on the root; parameters become DTensors and the
            module stays the same object).
        static_graph: DDP's ``static_graph`` (OpenCLIP's ``--ddp-static-graph``).
        mixed_precision: FSDP2 parameter dtype for compute (e.g. bf16), fp32 reductions.
    """
    if mode not in ("ddp", "fsdp"):
        raise ValueError(f"mode must be 'ddp' or 'fsdp', got {mode!r}")
    if not info.distributed:
        return model
    if mode == "ddp":
        ids = [info.device] if info.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, static_graph=static_graph)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    _scalars_to_1d(model)
    mp = MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32) if mixed_precision else MixedPrecisionPolicy()
    for m in shard_modules(model):
        fully_shard(m, mp_policy=mp)
        for method in FSDP_FORWARD_METHODS:  # entry points other than forward must unshard too
            if hasattr(m, method):
                register_fsdp_forward_method(m, method)
    fully_shard(model, mp_policy=mp)
    return model


_SCALARS_ATTR = "_clipfast_fsdp_scalars"
# Block methods the model calls instead of forward (clipfast's text tower runs its last block only for the
# pooled token through ``forward_pooled``, and packed captions through ``forward_varlen``/``forward_pooled_varlen``).
FSDP_FORWARD_METHODS = ("forward_pooled", "forward_varlen", "forward_pooled_varlen")


def _scalars_to_1d(model: torch.nn.Module) -> None:
    """fully_shard rejects 0-d parameters: make ``logit_scale`` & co. shape (1,) (values unchanged);
    :func:`full_state_dicts` gives them back as 0-d so checkpoints keep OpenCLIP's shapes."""
    names = []
    for mod_name, mod in model.named_modules():
        for p_name, p in list(mod._parameters.items()):
            if p is not None and p.ndim == 0:
                mod._parameters[p_name] = torch.nn.Parameter(p.detach().reshape(1), requires_grad=p.requires_grad)
                names.append(f"{mod_name}.{p_name}" if mod_name else p_name)
    setattr(model, _SCALARS_ATTR, names)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module under DDP / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a copy); the value itself without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def any_rank(flag: bool, device) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. one rank got SIGTERM)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def is_sharded(model: torch.nn.Module) -> bool:
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple:
    """(model state_dict with OpenCLIP names, optimizer state_dict), unsharded, on CPU under FSDP2.

    Collective under FSDP2 (every rank must call it); plain ``state_dict()`` calls otherwise.
    """
    base = unwrap_model(model)
    if not is_sharded(base):
        return base.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(base, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    for name in getattr(base, _SCALARS_ATTR, []):
        if name in model_sd:
            model_sd[name] = model_sd[name].reshape(())
    return model_sd, optim_sd


def load_full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd) -> None:
    """Inverse of :func:`full_state_dicts` (every rank loads the same full dicts)."""
    base = unwrap_model(model)
    if not is_sharded(base):
        base.load_state_dict(model_sd)
        if optim_sd is not None:
            optimizer.load_state_dict(optim_sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    model_sd = dict(model_sd)
    for name in getattr(base, _SCALARS_ATTR, []):
        if name in model_sd:
            model_sd[name] = model_sd[name].reshape(1)
    set_state_dict(base, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd or {},
                   options=StateDictOptions(full_state_dict=True))
