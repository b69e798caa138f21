"""Sharded training: FSDP2 (`torch.distributed.fsdp.fully_shard`) under ``accelerate launch``.

`accelerate launch --config_file configs/accelerate/fsdp.yaml` sets ``ACCELERATE_USE_FSDP``;
`requested` reads which engine a launch asked for and `check_launch` refuses what cannot run.
Accelerate applies FSDP only on accelerators (on a CPU it falls back to plain data parallelism),
so the trainer shards the model itself, the same way on every device: each decoder layer is one
FSDP unit and the rest (embeddings, final norm, output head) the root unit. The frozen teacher
of a full fine-tune is sharded the same way; with LoRA the teacher is the sharded student with its
adapters off.

What this changes for the rest of the trainer:

- parameters become DTensors (a shard per process): the optimizer is made after sharding, and
  clipping reduces the shards' squared norms over the processes (`clip_grad_norm_`);
- the gradients are reduce-scattered as averages over the processes, like DDP's all-reduce, so
  the loss normalization (`training.step`) is unchanged;
- the chunked loss reads the output head after the forward pass, while the root unit is
  gathered (FSDP2 keeps the root gathered from its forward to its backward);
- code that runs the network outside a training step (memorization, the chunked-path check) runs
  inside `gathered`: every process gathers every unit; the main process computes;
- checkpoints hold whole tensors (`full_state`, `full_optimizer_state`): they load on any number
  of processes, sharded or not; the output is rebuilt as a plain model (`plain_copy`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import UserError

ENGINES = ("ddp", "fsdp", "deepspeed")


def requested(environ: dict | None = None) -> str:
    """The engine ``accelerate launch`` was asked for (its config sets these variables)."""
    environ = os.environ if environ is None else environ
    if environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return "ddp"


def check_launch(environ: dict | None = None) -> str:
    """The engine of this launch, or a one-line refusal of one the trainer cannot run."""
    engine = requested(environ)
    environ = os.environ if environ is None else environ
    if engine == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise UserError("this launch asks for DeepSpeed, which is not installed (pip install deepspeed builds it "
                            "from source); configs/accelerate/fsdp.yaml shards like ZeRO-3 without it")
        raise UserError("DeepSpeed launches are not supported by the trainer: DeepSpeed's engine steps and scales "
                        "the loss on every backward, and a step here runs several (micro-batches, the retain "
                        "term); use configs/accelerate/fsdp.yaml (sharding like ZeRO-3) or ddp.yaml")
    if engine == "fsdp" and environ.get("FSDP_VERSION", "2") != "2":
        raise UserError("the trainer shards with FSDP2 (fully_shard): set fsdp_version: 2 in the Accelerate config")
    return engine


def launch_settings(path: Path) -> dict:
    """What an Accelerate config file launches: the engine, processes, and for DeepSpeed the ZeRO
    stage, for FSDP its version; refused when the trainer or the planner cannot use it."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"cannot read the Accelerate config {path}: {error}") from None
    kind = data.get("distributed_type", "NO")
    settings = {"processes": int(data.get("num_processes", 1)), "mixed_precision": data.get("mixed_precision", "no")}
    if settings["mixed_precision"] != "no":
        raise UserError(f"{path}: set mixed_precision: 'no'; unlearn --precision bf16 autocasts the products itself "
                        "and keeps float32 weights, which the loss normalization is tested with")
    if kind == "FSDP":
        version = int(data.get("fsdp_config", {}).get("fsdp_version", 1))
        if version != 2:
            raise UserError(f"{path}: fsdp_version must be 2 (FSDP2, fully_shard)")
        return {"engine": "fsdp", "strategy": "fsdp", "fsdp_version": version, **settings}
    if kind == "DEEPSPEED":
        stage = int(data.get("deepspeed_config", {}).get("zero_stage", 0))
        if stage not in (2, 3):
            raise UserError(f"{path}: zero_stage must be 2 or 3")
        return {"engine": "deepspeed", "strategy": f"zero{stage}", "zero_stage": stage, **settings}
    if kind in ("MULTI_GPU", "MULTI_CPU", "NO"):
        return {"engine": "ddp", "strategy": "ddp", **settings}
    raise UserError(f"{path}: distributed_type {kind} is not one the trainer runs (MULTI_GPU, MULTI_CPU, FSDP)")


def active(accelerator) -> bool:
    """Whether this run shards its model: an FSDP launch with a process group."""
    return requested() == "fsdp" and torch.distributed.is_available() and torch.distributed.is_initialized()


def shard(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` sharded in place over every process: one FSDP unit per decoder layer, the root
    unit for the rest."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from .memory import decoder_layers

    # transformers' outputs are views; the trainer never changes them in place, which is what
    # this warning of FSDP2 guards against, once per forward.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _units(model: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: torch.nn.Module | None) -> bool:
    return model is not None and bool(_units(model))


@contextlib.contextmanager
def gathered(*models: torch.nn.Module | None) -> Iterator[None]:
    """Every unit of ``models`` gathered on every process for the block, and kept gathered
    across forward passes: one process alone may then run the network (no collective is
    issued while the units are whole). Every process must enter the block."""
    units = [u for model in models if is_sharded(model) for u in _units(model)]
    roots = {id(model) for model in models if model is not None}
    inner = [u for u in units if id(u) not in roots]  # the root units never reshard after forward
    for unit in units:
        unit.unshard()
    for unit in inner:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in inner:
            unit.set_reshard_after_forward(True, recurse=False)
        for unit in units:
            unit.reshard()


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor; a plain tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor (gathered from every process: all must call it in the same order)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def full_state(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole CPU copies of ``named`` (a checkpoint's trainable weights)."""
    return {name: full(value.detach()).cpu() for name, value in named.items()}


def clip_grad_norm_(parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ over sharded gradients: the squared norms of the local
    shards (disjoint) summed over the processes give the whole gradient's norm."""
    grads = [local(p.grad) for p in parameters if p.grad is not None]
    squared = torch.zeros((), dtype=torch.float32, device=grads[0].device if grads else "cpu")
    for grad in grads:
        squared += grad.float().pow(2).sum()
    torch.distributed.all_reduce(squared)
    norm = squared.sqrt()
    coefficient = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for grad in grads:
        grad.mul_(coefficient.to(grad.dtype))
    return norm


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any process (every process must call it)."""
    value = torch.tensor(float(flag), device=device)
    torch.distributed.all_reduce(value)
    return bool(value.item() > 0)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state with whole tensors, keyed by parameter name: it loads into a run
    on any number of processes (`load_optimizer_state`). Every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a checkpoint's optimizer state: by parameter name when it was saved whole by a
    sharded run (`full_optimizer_state`), else as `optimizer.state_dict()` wrote it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if all(isinstance(key, int) for key in state.get("state", {})) and \
            all(isinstance(p, int) for group in state.get("param_groups", []) for p in group["params"]):
        if is_sharded(model):  # saved by a plain run: name its parameters as the sharded model does
            names = [n for n, p in model.named_parameters() if p.requires_grad]
            state = {"state": {names[i]: v for i, v in state["state"].items()},
                     "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        else:
            optimizer.load_state_dict(state)
            return
    optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper: the torch optimizer inside
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def plain_copy(model: torch.nn.Module, rebuild, main: bool) -> torch.nn.Module | None:
    """On the main process, an unsharded copy of ``model`` (on the CPU) built by ``rebuild()``
    (the same architecture, fresh weights) and given the whole weights; None elsewhere. Every
    process must call it."""
    state = {name: full(value.detach()).cpu() for name, value in model.state_dict().items()}
    if not main:
        return None
    plain = rebuild()
    missing, unexpected = plain.load_state_dict(state, strict=False)
    tied = {name for name, _ in plain.named_parameters(remove_duplicate=False)} - {
        name for name, _ in plain.named_parameters()}
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"sharded state does not fit the rebuilt model: missing {missing}, unexpected {unexpected}")
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()
    return plain


def fresh_architecture(config) -> torch.nn.Module:
    """A float32 model of ``config``'s architecture (weights to be loaded)."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):  # GGUF-loaded weights are already floats
        delattr(config, "quantization_config")
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
