"""`unmemorize plan`: the memory one training process needs, before anything is launched.

The model's architecture comes from its config alone (a `training.memory.KNOWN` architecture,
a local directory, a registry model's cache or the hub cache; no weights are read), the terms
from `training.memory.memory_terms`; with a budget (``--memory`` or ``--gpus``) the first
setting of `training.memory.candidates` that fits is reported with the flags that give it."""

from __future__ import annotations

import dataclasses

from ..config import PlanConfig, as_json
from ..errors import UserError
from ..events import Events
from ..methods import get_method
from ..models import config_directory
from ..training import memory

# The ready Accelerate configs (configs/accelerate/) for each strategy.
LAUNCH = {
    "ddp": "configs/accelerate/ddp.yaml", "zero2": "configs/accelerate/deepspeed_zero2.yaml",
    "fsdp": "configs/accelerate/fsdp.yaml", "zero3": "configs/accelerate/deepspeed_zero3.yaml",
}


def resolve_architecture(name: str, trust_remote_code: bool = False) -> tuple[memory.Architecture, str]:
    """The model's `Architecture` and where its config came from."""
    from transformers import AutoConfig

    known = memory.known_config(name)
    if known is not None:
        return memory.architecture(known, name), f"published config.json of {memory.KNOWN[name.lower()][0]}"
    directory = config_directory(name)
    if directory is None:
        raise UserError(f"no config found for {name!r}: pass a local model directory, a model in the local "
                        f"Hugging Face cache, or one of {', '.join(memory.KNOWN)}")
    try:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"cannot read the config of {name!r} in {directory}: {error}") from None
    return memory.architecture(config, name), str(directory / "config.json")


def setting_of(config: PlanConfig, processes: int) -> memory.Setting:
    method = get_method(config.method)
    if not method.trains:
        raise UserError(f"--method {config.method} trains nothing: it needs no training memory")
    precision = config.precision or ("bf16" if config.device == "cuda" else "fp32")
    return memory.Setting(
        batch_size=config.batch_size, max_length=config.max_length, lora=config.lora, lora_r=config.lora_r,
        teacher=method.needs_teacher, optimizer=config.optimizer, chunked=not config.full_logits,
        compute_bytes=2 if precision == "bf16" else 4, strategy=config.strategy, processes=processes,
        grad_accum=config.grad_accum, device=config.device,
    )


def flags(setting: memory.Setting) -> str:
    """The command line that trains with ``setting``."""
    launch = (f"accelerate launch --config_file {LAUNCH[setting.strategy]} --num_processes {setting.processes} "
              "-m unmemorize.cli unlearn" if setting.processes > 1 else "unmemorize unlearn")
    return (f"{launch} {'--lora' if setting.lora else '--no-lora'} --batch-size {setting.batch_size} "
            f"--grad-accum {setting.grad_accum} --max-length {setting.max_length}")


def _described(arch: memory.Architecture, setting: memory.Setting) -> dict:
    terms = memory.memory_terms(arch, setting)
    return {"setting": dataclasses.asdict(setting), "terms": terms, "total": sum(terms.values()),
            "command": flags(setting)}


def run_plan(config: PlanConfig, events: Events | None = None) -> dict:
    """The plan as a dict: the architecture, the asked setting's terms and total, and with a
    budget whether it fits and the first candidate that does (None when none does)."""
    events = events or Events()
    processes, budget = config.processes, None
    if config.gpus is not None:
        processes, budget = memory.parse_gpus(config.gpus)
    elif config.memory is not None:
        budget = memory.parse_size(config.memory)
    if config.strategy != "ddp" and processes == 1:
        events.message(f"--strategy {config.strategy} with one process shards nothing")
    arch, source = resolve_architecture(config.model, config.trust_remote_code)
    setting = setting_of(config, processes)
    plan = {
        "model": config.model, "config_source": source, "architecture": dataclasses.asdict(arch),
        "trainable_parameters": memory.trainable(arch, setting), "asked": _described(arch, setting),
        "options": as_json(config),
    }
    if budget is not None:
        fitting = memory.fitting_setting(arch, setting, budget, processes)
        plan["budget"] = {"bytes_per_process": budget, "processes": processes,
                          "fits": plan["asked"]["total"] <= budget,
                          "fitting": _described(arch, fitting) if fitting is not None else None}
    return plan
