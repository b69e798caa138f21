"""The parts a training run is assembled from: the student and its teacher, the optimizer and
learning-rate schedule, the forget-batch order and the retain stream. Each is a small function
or class with no knowledge of the loop that uses it."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch

from ..config import UnlearnConfig
from ..data import TokenizedExample, collate
from ..errors import UserError
from ..methods import UnlearningMethod

ALL_LINEAR = "all-linear"  # peft's name for every linear layer but the output head


def attention_projections(model: torch.nn.Module) -> list[str]:
    """Leaf names of the linear layers inside attention blocks (q/k/v/o on Llama and Gemma,
    q/k/v/out_proj on GPT-Neo, c_attn/c_proj on GPT-2): the paper's LoRA targets."""
    from transformers.pytorch_utils import Conv1D

    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and ("attn" in full_name or "attention" in full_name):
            names.add(full_name.rsplit(".", 1)[-1])
    if not names:
        raise UserError("no attention projections found for LoRA; pass --lora-targets")
    return sorted(names)


def add_lora(model: torch.nn.Module, config: UnlearnConfig) -> torch.nn.Module:
    """The model with LoRA adapters on ``config.lora_targets`` (resolved by the caller)."""
    from peft import LoraConfig, get_peft_model

    targets = config.lora_targets
    return get_peft_model(model, LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=ALL_LINEAR if targets == (ALL_LINEAR,) else list(targets), task_type="CAUSAL_LM",
    ))


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The teacher of a full fine-tune. A frozen copy costs one model's weights (1 GiB for
    Gemma-3 270M in fp32); precomputed teacher logits would cost sequences × length × vocabulary
    floats instead (6.7 GB for 32 sequences of 200 tokens over Gemma's 262k vocabulary)."""
    return copy.deepcopy(model).eval().requires_grad_(False)


class Teacher:
    """The original model's logits: a frozen copy, or (LoRA) the student with its adapters off,
    in eval mode."""

    def __init__(self, unwrap: Callable[[], torch.nn.Module], frozen: torch.nn.Module | None) -> None:
        self.unwrap, self.frozen = unwrap, frozen

    @contextlib.contextmanager
    def network(self) -> Iterator[torch.nn.Module]:
        """The original network, in eval mode, for as long as the block runs."""
        if self.frozen is not None:
            yield self.frozen
            return
        net = self.unwrap()
        net.eval()
        try:
            with net.disable_adapter():
                yield net
        finally:
            net.train()

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad(), self.network() as net:
            return net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def hidden(self, batch: dict[str, torch.Tensor]):
        """The teacher's output head and last hidden states [B, T, H] (the chunked loss path)."""
        from .loss import final_hidden, output_head

        with torch.no_grad(), self.network() as net:
            hidden = final_hidden(net, batch)[0]
            return output_head(net), hidden  # read after the forward: a sharded head is gathered then


def needs_teacher(method: UnlearningMethod, has_retain: bool) -> bool:
    return method.needs_teacher or (has_retain and method.retain_needs_teacher)


def make_optimizer(parameters: list[torch.nn.Parameter], config: UnlearnConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, weight_decay=config.weight_decay)
    # The fused kernel updates each weight in one pass, without the full-size temporaries of the
    # default multi-tensor version (which raise a full fine-tune's peak memory by a model's size).
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=True)


def lr_factor(config: UnlearnConfig, total_steps: int) -> Callable[[int], float]:
    """The learning rate's multiplier at step k (0-based): linear warm-up, then constant or a
    linear decay to a tenth at the last step. Unlearning runs are short and stop on a
    memorization target, so constant is the default."""
    warmup = config.warmup_steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.lr_schedule == "linear":
            span = max(total_steps - 1 - warmup, 1)
            return 1.0 - 0.9 * min(step - warmup, span) / span
        return 1.0

    return factor


def seeded_permutation(size: int, *key: int) -> list[int]:
    """A permutation of range(size) drawn from the integer ``key`` alone: the same in every process
    and run (hash() of a tuple of ints is not randomized)."""
    generator = torch.Generator().manual_seed(hash(key) & 0xFFFF_FFFF_FFFF_FFFF)
    return torch.randperm(size, generator=generator).tolist()


class EpochShuffle(torch.utils.data.Sampler):
    """A fresh permutation each epoch, drawn from (seed, epoch) alone: a resumed run finds the
    order of any epoch without replaying the ones before it. Accelerate calls set_epoch."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(seeded_permutation(self.size, self.seed, self.epoch))

    def __len__(self) -> int:
        return self.size


def forget_loader(items: list[TokenizedExample], weights: list[list[float]], batch_size: int, seed: int,
                  pad_id: int, lowered: list[list[list[int]]] | None = None) -> torch.utils.data.DataLoader:
    """Seeded forget micro-batches (``lowered``: each sequence's tokens to lower, --joint-lowering)."""
    dataset = list(zip(items, weights, lowered or [None] * len(items)))
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=EpochShuffle(len(dataset), seed),
        # The loader's own seed draw comes from here, not from the global RNG that dropout uses.
        generator=torch.Generator().manual_seed(seed),
        collate_fn=lambda rows: collate([r[0] for r in rows], [r[1] for r in rows], pad_id,
                                        [r[2] for r in rows] if lowered is not None else None),
    )


class RetainStream:
    """Retain micro-batches drawn alongside the forget micro-batches, cycling the retain set: an
    endless stream of seeded permutations of it (a new one each pass). The forget micro-batch
    number k of the run, on process r of P, gets stream items [(k·P + r)·b, (k·P + r + 1)·b).
    A pure function of k: a resumed run draws the same retain batches, and P processes or
    gradient accumulation see the same items as one process with the whole batch."""

    def __init__(self, items: list[TokenizedExample], batch_size: int, seed: int, pad_id: int) -> None:
        self.items, self.batch_size, self.seed, self.pad_id = items, batch_size, seed, pad_id
        self._cycle, self._order = -1, []  # the permutation of the current pass

    def _item(self, position: int) -> TokenizedExample:
        cycle, offset = divmod(position, len(self.items))
        if cycle != self._cycle:
            # The key's -1 keeps it distinct from the forget order's (seed, epoch).
            self._cycle, self._order = cycle, seeded_permutation(len(self.items), self.seed, -1, cycle)
        return self.items[self._order[offset]]

    def batch(self, k: int, rank: int = 0, processes: int = 1) -> dict[str, torch.Tensor]:
        start = (k * processes + rank) * self.batch_size
        rows = [self._item(position) for position in range(start, start + self.batch_size)]
        return collate(rows, [[1.0] * len(row.input_ids) for row in rows], self.pad_id)


class FinalWeights:
    """Methods that edit the weights once training is done (task arithmetic) see the trainable
    weights as they were before training; memorization is measured on the edited weights while
    training goes on from the trained ones."""

    def __init__(self, method: UnlearningMethod, named_trainable: dict[str, torch.nn.Parameter]) -> None:
        self.method, self.named = method, named_trainable
        self.initial = None
        if method.keeps_initial_weights:
            self.initial = {name: p.detach().clone() for name, p in named_trainable.items()}

    def load(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in weights.items():
                self.named[name].copy_(value)

    def put_in_place(self) -> dict[str, torch.Tensor]:
        """Put the final weights in place; returns the trained weights they replace."""
        trained = {name: p.detach().clone() for name, p in self.named.items()}
        self.load(self.method.final_weights(trained, self.initial))
        return trained

    @contextlib.contextmanager
    def in_place(self) -> Iterator[None]:
        """The final weights for the duration of the block (a no-op for most methods)."""
        if self.initial is None:
            yield
            return
        trained = self.put_in_place()
        try:
            yield
        finally:
            self.load(trained)
