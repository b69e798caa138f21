"""Model plumbing shared by the metrics: KV-cached decoding, teacher-forced passes, the output
layer (with an exact fast greedy argmax), top-p nucleus selection, and small helpers.

:func:`decode` is written by hand rather than calling ``model.generate``: generate merges the
model's saved generation config (sampling flags, top-k, repetition penalties, and an unset
eos_token_id falls back to the default and stops at end-of-text), any of which silently changes
the decoding a metric is defined by. Here only the caller's ``choose_next`` picks a token, and
end-of-text is an ordinary token unless the caller passes a stop condition.

Where the time goes (Gemma-3 270M, fp32, 2-core CPU, batch 32, torch.profiler): the output
layer, a [32 x 640] x [640 x 262,144] product, took 282 ms of each ~370 ms decoding step (76 %)
at ~38 GFLOP/s, half the speed of the decoder's own matrix products; the decoder's products
~90 ms; growing the KV cache by ``torch.cat`` ~9 ms per step at 80 tokens and linear in the
context; mask building, argmax and Python overhead a few ms. Hence, for models whose layout
:func:`split_model` knows:

* the decoder and the output layer run separately, the output layer only where logits are
  needed (last position while decoding, wanted positions when teacher forcing);
* greedy steps take the argmax through :func:`greedy_tokens`: a bfloat16 screen (3x the fp32
  throughput on CPUs with native bfloat16) with a rigorous error bound picks the few tokens that
  can be the fp32 argmax, and only those are recomputed in fp32; the result is the argmax of
  the full fp32 logits, not an approximation;
* the KV cache is preallocated (:class:`BufferCache`) and written in place;
* a prefix whose keys and values a teacher-forced pass already computed is never recomputed:
  :func:`prefix_states` keeps them and :func:`decode_from_states` continues from them.

Models the split does not know (or stand-ins without a KV cache) take the generic loop, which
calls the whole model each step exactly as before.
"""

from __future__ import annotations

import inspect
import os
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from unmemorize.errors import UserError

ProgressCallback = Callable[[int, int], None]
# (last-position logits [rows, V], step) -> next token per row [rows].
ChooseNext = Callable[[torch.Tensor, int], torch.Tensor]
# Next token per row [rows] -> whether the row stops there [rows] (the token is not kept).
StopCondition = Callable[[torch.Tensor], torch.Tensor]
# Per layer, (keys, values) of one sequence: [kv_heads, length, head_dim] each.
PrefixState = list[tuple[torch.Tensor, torch.Tensor]]


# --- small helpers ------------------------------------------------------------------------


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd, restoring the caller's training flag after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters live (the CPU for a model without any)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def accepts_kwarg(model: torch.nn.Module, name: str) -> bool:
    """Whether the model's forward names ``name`` explicitly (looking through a PEFT wrapper,
    whose own forward only has **kwargs)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return name in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def returned_cache(outputs: Any) -> tuple[str, Any] | None:
    """The KV cache a forward returned and the keyword that feeds it back. Transformers 5
    calls both ``cache``; earlier versions ``past_key_values``. None: the model keeps no cache."""
    for name in ("cache", "past_key_values"):
        cache = getattr(outputs, name, None)
        if cache is not None:
            return name, cache
    return None


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Half-precision logits lose too much in softmax and log-softmax over a large vocabulary;
    float32 and float64 (tests) stay as they are."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be an integer >= 1, got {value!r}")


def token_counter(progress: ProgressCallback | None, total: int) -> Callable[[int], None]:
    """Report ``progress(0, total)`` now; the returned callback adds a count of new tokens and
    reports the running sum."""
    done = 0
    if progress is not None:
        progress(0, total)

    def on_tokens(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    return on_tokens


def default_threads(sample_seconds: float = 0.5) -> int:
    """A torch intra-op thread count for evaluation on this machine.

    ``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``) wins when set. Otherwise: the cores this process
    may run on, minus those other processes keep busy, and at least 1. Busy cores are sampled
    from /proc/stat over ``sample_seconds`` (this process's own use left out); where there is no
    /proc/stat, the 1-minute load average stands in (it lags, and counts this process too).

    Why: every torch op ends at a barrier of all its threads, so a thread sharing its core with
    another busy process stalls all of them. Measured on the 2-core machine this was written on
    (Gemma-3 270M, greedy decoding of 32 prompts x 16 tokens, benchmarks in the report): idle,
    2 threads took 7.0-7.6 s against 10.6-15.1 s for 1; with one other busy process, 2 threads
    took 16.1-18.3 s against 10.5-10.8 s for 1 (the task brief saw 4x on a busier machine).
    """
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    busy = _busy_cores(sample_seconds, os.cpu_count() or cores)
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average on this platform
            busy = 0.0
    return max(1, min(cores, cores - round(busy)))


def _busy_cores(seconds: float, cores: int) -> float | None:
    """Cores other processes kept busy over the next ``seconds``, from /proc/stat; None where
    it cannot be read."""

    def sample() -> tuple[float, float, float]:
        with open("/proc/stat") as handle:
            fields = [float(x) for x in handle.readline().split()[1:]]
        own = os.times()
        # idle + iowait are idle time; the rest (user, nice, system, irq, softirq, steal) busy.
        return sum(fields[:8]), fields[3] + fields[4], own.user + own.system

    try:
        total_0, idle_0, own_0 = sample()
        time.sleep(seconds)
        total_1, idle_1, own_1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total_1 <= total_0:
        return None
    busy_share = 1.0 - (idle_1 - idle_0) / (total_1 - total_0)
    return max(0.0, busy_share * cores - (own_1 - own_0) / seconds)


# --- teacher forcing ----------------------------------------------------------------------


def right_padded(
    sequences: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) on the CPU, each sequence from column 0, padded after."""
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask


def teacher_forced_logits(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    device: torch.device,
    **kwargs: Any,
) -> torch.Tensor:
    """Logits of one forward pass over the right-padded sequences, without a KV cache.

    Right padding: causal attention never lets a real token see the pads after it, and
    positions stay 0..n-1, so a sequence scores the same in any batch. ``kwargs`` go to the
    model (e.g. ``logits_to_keep``).
    """
    input_ids, attention_mask = right_padded(sequences, pad_token_id)
    position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    return model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        use_cache=False,
        **kwargs,
    ).logits


# --- the model in two halves --------------------------------------------------------------

# Causal LMs whose logits are exactly ``lm_head(decoder(...).last_hidden_state)``, followed by
# ``final_logit_softcapping`` for the Gemma 2/3 families. Others (logit scaling, extra heads)
# take the generic path, which calls the whole model.
_SPLIT_MODEL_TYPES = frozenset(
    {"gpt_neo", "gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"}
)
_SOFTCAPPED_MODEL_TYPES = frozenset({"gemma2", "gemma3_text"})


@dataclass
class ModelParts:
    """A causal LM as its decoder (hidden states after the final norm) and its output layer.

    Made afresh by :func:`split_model` for each metric call: the output layer's bfloat16 screen
    (see :func:`greedy_tokens`) is checked against the weights once per ModelParts."""

    decoder: torch.nn.Module
    head: torch.nn.Module
    softcap: float | None
    cache_keyword: str
    device: torch.device
    screen: _Screen | None = field(default=None, init=False, repr=False)
    screen_checked: bool = field(default=False, init=False, repr=False)

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        """Last hidden states [rows, length, H]; with ``cache``, its keys and values are used
        and the new ones appended."""
        extra = {self.cache_keyword: cache} if cache is not None else {}
        return self.decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            use_cache=cache is not None, **extra,
        ).last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's logits for these hidden states, computed as its own forward does."""
        logits = _sliced_linear(self.head, hidden)
        if logits is None:
            logits = self.head(hidden)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


# A large fp32 output layer applied to at most _SLICED_MAX_ROWS rows runs 1.2-1.45x faster in
# vocabulary slices of _LOGIT_SLICE rows (the output stays in cache), with bitwise the same
# result: each logit is the same dot product (see _COLUMN_BLOCK). Beyond ~200 rows one product
# is as fast.
_LOGIT_SLICE = 2048
_SLICED_MAX_ROWS = 192


def _sliced_linear(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor | None:
    """``head(hidden)`` for a plain linear layer, slice by slice; None where not worth it."""
    if type(head) is not torch.nn.Linear or hidden.device.type != "cpu":
        return None
    weight, bias = head.weight, head.bias
    rows = hidden.reshape(-1, hidden.shape[-1])
    if weight.shape[0] < SCREEN_MIN_VOCAB or rows.shape[0] > _SLICED_MAX_ROWS or rows.shape[0] == 0:
        return None
    out = rows.new_empty(rows.shape[0], weight.shape[0])
    for start in range(0, weight.shape[0], _LOGIT_SLICE):
        end = start + _LOGIT_SLICE
        out[:, start:end] = F.linear(rows, weight[start:end], None if bias is None else bias[start:end])
    return out.reshape(*hidden.shape[:-1], weight.shape[0])


def split_model(model: torch.nn.Module) -> ModelParts | None:
    """The decoder and output layer of a causal LM of a known layout (a LoRA-wrapped one too),
    or None: then callers run the whole model."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return None  # virtual tokens are added by the wrapper's forward
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _SPLIT_MODEL_TYPES:
        return None
    prefix = getattr(inner, "base_model_prefix", "")
    decoder = getattr(inner, prefix, None) if prefix else None
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if not isinstance(decoder, torch.nn.Module) or decoder is inner or head is None:
        return None
    try:
        parameters = inspect.signature(decoder.forward).parameters
    except (TypeError, ValueError):
        return None
    keyword = next((k for k in ("cache", "past_key_values") if k in parameters), None)
    if keyword is None:
        return None
    softcap = getattr(config, "final_logit_softcapping", None)
    softcap = softcap if model_type in _SOFTCAPPED_MODEL_TYPES else None
    return ModelParts(decoder, head, softcap, keyword, model_device(model))


def forward_hidden(
    parts: ModelParts,
    sequences: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    keep_states: bool = False,
) -> tuple[torch.Tensor, list[PrefixState] | None]:
    """One teacher-forced pass over right-padded sequences: hidden states [rows, width, H] and,
    with ``keep_states``, each sequence's keys and values (see :func:`decode_from_states`)."""
    input_ids, attention_mask = right_padded(sequences, pad_token_id)
    position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    # A cache without a config keeps every layer whole (no sliding-window cropping); the
    # sliding window still applies through the attention mask.
    cache = DynamicCache() if keep_states else None
    hidden = parts.hidden(
        input_ids.to(parts.device), attention_mask.to(parts.device),
        position_ids.to(parts.device), cache,
    )
    if cache is None:
        return hidden, None
    states = [
        [(layer.keys[row, :, : len(seq)], layer.values[row, :, : len(seq)]) for layer in cache.layers]
        for row, seq in enumerate(sequences)
    ]
    return hidden, states


# --- the output layer: exact greedy argmax through a bfloat16 screen -------------------------

# Vocabularies below this are cheap enough in fp32; above it the screen pays for itself.
SCREEN_MIN_VOCAB = 16384
_UNIT_FP32 = 2.0**-24
_UNIT_BF16 = 2.0**-8
# MKL computes each column of an fp32 product bitwise as in the full product when the number of
# columns is a multiple of 16 (checked for 1-512 rows, 1 and 2 threads); other counts take a
# tail kernel whose rounding differs.
_COLUMN_BLOCK = 16
_SCREEN_SLICE = 8192


class _Screen:
    """A bfloat16 copy of an fp32 output layer's weight and the row-norm constants of the bound."""

    def __init__(self, weight: torch.Tensor, stamp: tuple):
        self.stamp = stamp
        weight = weight.detach()
        self.low = weight.to(torch.bfloat16)
        norm = residual = 0.0
        for start in range(0, weight.shape[0], 16384):
            rows = weight[start : start + 16384].double()
            norm = max(norm, float(rows.norm(dim=1).max()))
            residual = max(residual, float((rows - self.low[start : start + 16384].double()).norm(dim=1).max()))
        self.norm = norm * (1 + 1e-9)  # max ||w_v||
        self.residual = residual * (1 + 1e-9)  # max ||w_v - bf16(w_v)||
        self.valid = self._self_check(weight)

    def _self_check(self, weight: torch.Tensor) -> bool:
        """The bound assumes fp32 accumulation of the bfloat16 products; a CPU library that
        accumulated in bfloat16 would break it, so check it once on random rows."""
        generator = torch.Generator().manual_seed(0)
        hidden = torch.randn(16, weight.shape[1], generator=generator) * 30
        low_hidden = hidden.to(torch.bfloat16)
        approx = F.linear(low_hidden, self.low).double()
        exact = F.linear(hidden, weight).double()
        slack, c = _bound(hidden, low_hidden, self)
        return bool(((approx - exact).abs() <= slack[:, None] + c * approx.abs()).all())


_SCREENS: dict[int, _Screen] = {}


def _fingerprint(weight: torch.Tensor) -> tuple:
    """Where and what the weight is: its address, shape and the sum of its bit patterns. Not
    its version counter: an update through ``.data`` (PEFT's adapter merge) leaves it as is."""
    bits = weight.detach().contiguous().flatten()
    # Pairs of fp32 words summed as int64 (wrapping): no converted copy of the weight, which
    # for Gemma's output layer cost ~1 s per decoding call (0.03 s this way).
    try:
        bits = bits.view(torch.int64)
    except RuntimeError:  # an odd size or offset
        bits = bits.view(torch.int32)
    return weight.data_ptr(), tuple(weight.shape), int(bits.sum(dtype=torch.int64))


def _screen_for(weight: torch.Tensor) -> _Screen:
    """The screen of this weight, rebuilt when the weight changed."""
    key = id(weight)
    stamp = _fingerprint(weight)
    screen = _SCREENS.get(key)
    if screen is None or screen.stamp != stamp:
        if screen is None:
            weakref.finalize(weight, _SCREENS.pop, key, None)
        screen = _SCREENS[key] = _Screen(weight, stamp)
    return screen


def _screen_of(parts: ModelParts) -> _Screen | None:
    """The checked screen of the model's output layer, or None where it is not used: not a
    plain fp32 linear layer on the CPU, a small vocabulary, or no native bfloat16."""
    if not parts.screen_checked:
        parts.screen_checked = True
        head = parts.head
        supported = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
        if (
            type(head) is torch.nn.Linear and head.bias is None and parts.softcap is None
            and head.weight.dtype == torch.float32 and head.weight.device.type == "cpu"
            and head.weight.shape[0] >= SCREEN_MIN_VOCAB and supported()
        ):
            screen = _screen_for(head.weight)
            parts.screen = screen if screen.valid else None
    return parts.screen


def _bound(hidden: torch.Tensor, low_hidden: torch.Tensor, screen: _Screen) -> tuple[torch.Tensor, float]:
    """(slack [rows], c): |bf16 logit - fp32 logit| <= slack + c * |bf16 logit| for every token.

    With h = hi + lo (hi = bf16(h)) and w = w_hi + w_lo likewise, h.w - hi.w_hi = hi.w_lo + lo.w,
    bounded by ||hi|| ||w_lo|| + ||lo|| ||w|| (Cauchy-Schwarz). Each product's fp32 accumulation
    errs by at most ~K u32 ||h|| ||w|| (counted twice over, for both products and margin), and
    rounding the output to bfloat16 by u_bf16 of it (counted twice, in case it truncates)."""
    h, hi = hidden.double(), low_hidden.double()
    dims = hidden.shape[-1]
    slack = (
        hi.norm(dim=-1) * screen.residual
        + (h - hi).norm(dim=-1) * screen.norm
        + 4 * dims * _UNIT_FP32 * h.norm(dim=-1) * screen.norm
        + 1e-30
    )
    return slack, 2 * _UNIT_BF16 * 1.01


def greedy_tokens(parts: ModelParts, hidden: torch.Tensor) -> torch.Tensor:
    """The argmax of the model's logits for each row of ``hidden`` ([rows, H]), the first index
    on ties: exactly ``parts.logits(hidden).argmax(-1)``.

    For a large fp32 output layer on a CPU with native bfloat16, all logits are first computed
    in bfloat16; a rigorous bound on their error (:func:`_bound`) rules out every token whose
    fp32 logit cannot reach the row's maximum, and the few left (1-6 on Gemma-3 text) are
    recomputed in fp32, bitwise as the full product would (see ``_COLUMN_BLOCK``).
    """
    screen = _screen_of(parts)
    if screen is None or hidden.dtype != torch.float32:
        return parts.logits(hidden).argmax(dim=-1)
    weight = parts.head.weight
    hidden = hidden.contiguous()
    low_hidden = hidden.to(torch.bfloat16)
    # Vocabulary slices keep each product's output in cache (~1.4x faster than one product).
    approx = [
        F.linear(low_hidden, screen.low[start : start + _SCREEN_SLICE])
        for start in range(0, screen.low.shape[0], _SCREEN_SLICE)
    ]
    slice_top = torch.stack([part.amax(dim=-1) for part in approx], dim=-1)  # [rows, slices]
    top = slice_top.amax(dim=-1).double()
    slack, c = _bound(hidden, low_hidden, screen)
    # The fp32 maximum is at least `floor`; token v can reach it only if
    # approx_v + slack + c |approx_v| >= floor, i.e. approx_v >= threshold.
    floor = top - slack - c * top.abs()
    need = floor - slack
    threshold = torch.where(need >= 0, need / (1 + c), need / (1 - c))
    if not bool(torch.isfinite(threshold).all()):
        return parts.logits(hidden).argmax(dim=-1)
    # Lowered by more than bfloat16 rounding can raise it: comparing in bfloat16 is ~10x faster
    # than promoting every logit to float32.
    threshold = (threshold - threshold.abs() * 2**-7 - 1e-30).to(torch.bfloat16)
    # Only the (slice, row) pairs whose slice maximum reaches the row's threshold can hold
    # candidates: usually one or two slices per row.
    reach = slice_top >= threshold[:, None]
    columns = []
    for index in reach.any(dim=0).nonzero().squeeze(1).tolist():
        rows = reach[:, index].nonzero().squeeze(1)
        part = approx[index].index_select(0, rows)
        hits = (part >= threshold.index_select(0, rows)[:, None]).any(dim=0).nonzero().squeeze(1)
        columns.append(hits + index * _SCREEN_SLICE)
    columns = torch.cat(columns)
    padding = (-len(columns)) % _COLUMN_BLOCK
    if padding:  # repeats of the first column: argmax keeps the first of equal values
        columns = torch.cat([columns, columns[:1].expand(padding)])
    exact = F.linear(hidden, weight.index_select(0, columns))
    return columns[exact.argmax(dim=-1)]


# --- a preallocated KV cache ----------------------------------------------------------------


class _BufferLayer(DynamicLayer):
    """A DynamicLayer (same mask sizes and lengths) whose keys and values live in preallocated
    buffers: appending writes in place and returns a view. DynamicLayer concatenates the whole
    cache at every step, ~1 GB of copying per step at 128 rows x 200 tokens of Gemma-3."""

    def __init__(self, capacity: int, keys: torch.Tensor | None = None,
                 values: torch.Tensor | None = None, filled: int = 0):
        super().__init__()
        self.capacity = capacity
        self.buffers = (keys, values)
        self.filled = filled
        if keys is not None:
            self.keys, self.values = keys[:, :, :filled], values[:, :, :filled]
            self.device = keys.device
            self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        rows, heads = key_states.shape[:2]
        # Every slot is written before it is read.
        self.buffers = (
            key_states.new_empty(rows, heads, self.capacity, key_states.shape[-1]),
            value_states.new_empty(rows, heads, self.capacity, value_states.shape[-1]),
        )
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.filled + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV buffer of {self.capacity} positions cannot take {end}")
        keys, values = self.buffers
        keys[:, :, self.filled : end] = key_states
        values[:, :, self.filled : end] = value_states
        self.filled = end
        self.keys, self.values = keys[:, :, :end], values[:, :, :end]
        return self.keys, self.values


class BufferCache(DynamicCache):
    """A DynamicCache made of :class:`_BufferLayer` layers."""

    def __init__(self, capacity: int | None = None, layers: list[_BufferLayer] | None = None):
        if layers is not None:
            Cache.__init__(self, layers=layers)
        else:
            Cache.__init__(self, layer_class_to_replicate=partial(_BufferLayer, capacity))


def cache_from_states(
    states: Sequence[PrefixState], lengths: Sequence[int], extra: int
) -> tuple[BufferCache, torch.Tensor]:
    """A cache holding, in row r, the first ``lengths[r]`` positions of ``states[r]``, right
    aligned (left padded) so new tokens follow every row at the same slot, and room for
    ``extra`` more; plus the [rows, width] mask of its real slots."""
    rows, width = len(states), max(lengths)
    layers = []
    for layer in range(len(states[0])):
        sample_keys, sample_values = states[0][layer]
        # Slots past `width` are written before they are read; only the left padding, read
        # under a zero attention weight, must hold finite numbers.
        keys = sample_keys.new_empty(rows, sample_keys.shape[0], width + extra, sample_keys.shape[-1])
        values = sample_values.new_empty(rows, sample_values.shape[0], width + extra, sample_values.shape[-1])
        for row, (state, length) in enumerate(zip(states, lengths)):
            keys[row, :, : width - length] = 0
            values[row, :, : width - length] = 0
            keys[row, :, width - length : width] = state[layer][0][:, :length]
            values[row, :, width - length : width] = state[layer][1][:, :length]
        layers.append(_BufferLayer(width + extra, keys, values, width))
    mask = torch.zeros(rows, width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, width - length :] = 1
    return BufferCache(layers=layers), mask


# --- decoding -----------------------------------------------------------------------------


def stop_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """The ids that end a generation as transformers' ``generate`` stops: the tokenizer's EOS
    and every id of the model's ``generation_config.eos_token_id`` (a list for Gemma-3 and
    Llama-3 instruct models)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    return sorted(ids)


def choose_argmax(last_logits: torch.Tensor, _step: int) -> torch.Tensor:
    """``choose_next`` for greedy decoding: the argmax of each row."""
    return last_logits.argmax(dim=-1)


def nucleus_mask(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which tokens of each row, sorted most likely first ([rows, k] probabilities), belong to
    the top-p nucleus: the smallest set of most likely tokens whose probability reaches
    ``top_p``. A token is in while the mass ranked above it is still short of ``top_p``; the
    top token always is, so ``top_p`` -> 0 is greedy."""
    mass_above = sorted_probs.cumsum(dim=-1) - sorted_probs
    in_nucleus = mass_above < top_p
    in_nucleus[:, 0] = True
    return in_nucleus


# Rows are searched among their top k tokens first; only flat rows widen k (see nucleus_sample).
NUCLEUS_FIRST_K = 256


def nucleus_sample(probs: torch.Tensor, top_p: float, uniforms: torch.Tensor) -> torch.Tensor:
    """Sample one token per row from the smallest set of most likely tokens whose mass reaches
    ``top_p``, by inverting its cumulative distribution at ``uniforms``.

    Each row is looked at among its top ``NUCLEUS_FIRST_K`` tokens first; only rows whose
    nucleus is wider (flat distributions) are searched again with a 4x larger k, so peaked rows
    never pay for sorting the whole vocabulary.
    """
    vocab = probs.shape[-1]
    if top_p >= 1.0:
        return invert_cdf(probs, uniforms)
    choice = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    pending = torch.arange(probs.shape[0], device=probs.device)
    k = min(NUCLEUS_FIRST_K, vocab)
    while pending.numel():
        top_probs, top_ids = probs[pending].topk(k, dim=-1)
        # The nucleus lies in the top k once the row's top-k mass reaches top_p.
        if k < vocab:
            settled = top_probs.sum(dim=-1) >= top_p
        else:
            settled = torch.ones_like(pending, dtype=torch.bool)
        if bool(settled.any()):
            kept = top_probs[settled]
            picked = invert_cdf(kept * nucleus_mask(kept, top_p), uniforms[pending[settled]])
            choice[pending[settled]] = top_ids[settled].gather(-1, picked[:, None]).squeeze(-1)
        pending = pending[~settled]
        k = min(vocab, k * 4)
    return choice


def invert_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index whose cumulative weight first reaches uniform x total, per row. Zero-weight
    entries never win: searchsorted returns the first index whose cdf is >= the target."""
    cdf = weights.cumsum(dim=-1)
    targets = (uniforms.to(cdf.dtype) * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, targets).clamp(max=cdf.shape[-1] - 1).squeeze(-1)


def decode(
    model: torch.nn.Module,
    prefixes: Sequence[Sequence[int]],
    lengths: Sequence[int],
    choose_next: ChooseNext,
    *,
    pad_token_id: int,
    stop: StopCondition | None = None,
    on_tokens: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Continue each prefix by up to ``lengths[row]`` tokens, all rows in one batch.

    At step s, ``choose_next(logits, s)`` gets the [rows, V] logits of the last position and
    returns the next token of every row (with :func:`choose_argmax` the logits are not built:
    :func:`greedy_tokens` gives the same tokens). With ``stop``, a row ends before the first
    token for which ``stop`` is true; from then on it is fed ``pad_token_id`` (its output is not
    used) and decoding ends once every row has stopped. Returns each row's new tokens (the
    prefix left out). ``on_tokens(count)`` is called after every step with the number of rows
    that still needed a token then.

    Prefixes are left padded, with an attention mask and position ids counted from the mask,
    which keeps each row identical to decoding it alone.
    """
    parts = split_model(model)
    if parts is None:
        return _decode_generic(
            model, prefixes, lengths, choose_next, pad_token_id=pad_token_id, stop=stop,
            on_tokens=on_tokens,
        )
    lengths = list(lengths)
    rows, width = len(prefixes), max(len(p) for p in prefixes)
    # All but each prefix's last token go into the cache in one pass (no output layer); the
    # last token is the first one fed by the decoding loop.
    context_ids = torch.full((rows, width - 1), pad_token_id, dtype=torch.long)
    context_mask = torch.zeros((rows, width - 1), dtype=torch.long)
    for row, prefix in enumerate(prefixes):
        context_ids[row, width - len(prefix) :] = torch.tensor(prefix[:-1], dtype=torch.long)
        context_mask[row, width - len(prefix) :] = 1
    cache = BufferCache(capacity=width - 1 + max(lengths))
    if width > 1:
        positions = (context_mask.cumsum(dim=-1) - 1).clamp(min=0)
        parts.hidden(
            context_ids.to(parts.device), context_mask.to(parts.device),
            positions.to(parts.device), cache,
        )
    feed = torch.tensor([prefix[-1] for prefix in prefixes], dtype=torch.long)
    feed_positions = torch.tensor([len(prefix) - 1 for prefix in prefixes], dtype=torch.long)
    return _decode_steps(
        parts, cache, context_mask, feed, feed_positions, lengths, choose_next,
        pad_token_id=pad_token_id, stop=stop, on_tokens=on_tokens,
    )


# (logits [rows, V], the job index of each row) -> next token per row: how jobs that are not
# greedy choose (e.g. each with its own random stream).
ChooseRows = Callable[[torch.Tensor, list[int]], torch.Tensor]


@dataclass
class _Row:
    """A job being decoded: its keys and values so far, the token to feed next and where."""

    job: int
    state: PrefixState
    length: int
    feed: int
    remaining: int


def decode_from_states(
    parts: ModelParts,
    states: Sequence[PrefixState],
    cuts: Sequence[int],
    feed: Sequence[int],
    lengths: Sequence[int],
    choose: ChooseRows | None,
    *,
    batch_size: int,
    pad_token_id: int,
    on_tokens: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Continue jobs whose prefix keys and values a teacher-forced pass already computed.

    Job j's context is the first ``cuts[j]`` positions of ``states[j]`` (from
    :func:`forward_hidden`), then the token ``feed[j]`` at position ``cuts[j]``; its first
    ``lengths[j]`` new tokens after that are returned, as :func:`decode` of the prefix
    ``sequence[:cuts[j]] + [feed[j]]`` would return them. ``choose`` None is greedy
    (:func:`greedy_tokens`); otherwise ``choose(logits, jobs)`` picks each row's token.

    Continuous batching: up to ``batch_size`` jobs run together, started in the given order;
    whenever an eighth of the rows has finished, the cache is rebuilt from the rows still
    running plus the next jobs, so no row computes tokens it throws away and batches stay full.
    ``pad_token_id`` is unused (no row is ever padded) and kept for symmetry with :func:`decode`.
    """
    results: list[list[int]] = [[] for _ in lengths]
    waiting = iter(range(len(lengths)))
    active: list[_Row] = []
    while True:
        for job in waiting:
            if lengths[job] > 0:
                state = [(keys[:, : cuts[job]], values[:, : cuts[job]]) for keys, values in states[job]]
                active.append(_Row(job, state, cuts[job], feed[job], lengths[job]))
            if len(active) == batch_size:
                break
        if not active:
            return results
        _run_segment(parts, active, choose, results, on_tokens)
        active = [row for row in active if row.remaining > 0]


def _run_segment(
    parts: ModelParts,
    active: list[_Row],
    choose: ChooseRows | None,
    results: list[list[int]],
    on_tokens: Callable[[int], None] | None,
) -> None:
    """Decode ``active`` rows until an eighth of them (or all) have finished; leaves each row's
    state pointing at its keys and values in this segment's cache."""
    steps = max(row.remaining for row in active)
    cache, context_mask = cache_from_states([row.state for row in active], [row.length for row in active], steps)
    width = context_mask.shape[1]
    mask = torch.ones((len(active), width + steps), dtype=torch.long, device=parts.device)
    mask[:, :width] = context_mask.to(parts.device)
    feed = torch.tensor([row.feed for row in active], dtype=torch.long, device=parts.device)[:, None]
    positions = torch.tensor([row.length for row in active], dtype=torch.long, device=parts.device)[:, None]
    jobs = [row.job for row in active]
    enough = max(1, len(active) // 8)
    done = 0
    for step in range(steps):
        hidden = parts.hidden(feed, mask[:, : width + step + 1], positions + step, cache)[:, -1]
        tokens = greedy_tokens(parts, hidden) if choose is None else choose(parts.logits(hidden), jobs)
        needed = 0
        for row, token in zip(active, tokens.tolist()):
            if row.remaining > 0:
                results[row.job].append(token)
                row.remaining -= 1
                needed += 1
            row.feed = token
        if on_tokens is not None:
            on_tokens(needed)
        feed, done = tokens[:, None], step + 1
        if sum(row.remaining == 0 for row in active) >= enough:
            break
    for index, row in enumerate(active):
        row.length += done
        row.state = [
            (layer.keys[index, :, width + done - row.length :], layer.values[index, :, width + done - row.length :])
            for layer in cache.layers
        ]


def _decode_steps(
    parts: ModelParts,
    cache: Cache,
    context_mask: torch.Tensor,
    feed: torch.Tensor,
    feed_positions: torch.Tensor,
    lengths: list[int],
    choose_next: ChooseNext,
    *,
    pad_token_id: int,
    stop: StopCondition | None,
    on_tokens: Callable[[int], None] | None,
) -> list[list[int]]:
    """The decoding loop: feed one token per row (``feed`` at ``feed_positions`` first, then
    each chosen token), choose the next from the last hidden state. ``cache`` holds the context
    and ``context_mask`` marks its real slots."""
    device = parts.device
    rows, steps, filled = len(lengths), max(lengths), context_mask.shape[1]
    mask = torch.ones((rows, filled + steps), dtype=torch.long, device=device)
    mask[:, :filled] = context_mask.to(device)
    feed, positions = feed.to(device)[:, None], feed_positions.to(device)[:, None]
    greedy = choose_next is choose_argmax
    chosen = _Chosen(lengths, pad_token_id, stop, on_tokens, device)
    for step in range(steps):
        hidden = parts.hidden(feed, mask[:, : filled + step + 1], positions + step, cache)[:, -1]
        if greedy:
            next_tokens = greedy_tokens(parts, hidden)
        else:
            next_tokens = choose_next(parts.logits(hidden), step)
        next_tokens, all_stopped = chosen.record(step, next_tokens)
        if all_stopped:
            break
        feed = next_tokens[:, None]
    return chosen.rows()


class _Chosen:
    """The tokens chosen at each step of a decoding loop, and where each row stopped."""

    def __init__(self, lengths: Sequence[int], pad_token_id: int, stop: StopCondition | None,
                 on_tokens: Callable[[int], None] | None, device: torch.device) -> None:
        self.lengths, self.steps = list(lengths), max(lengths)
        self.pad_token_id, self.stop, self.on_tokens = pad_token_id, stop, on_tokens
        self.tokens = torch.full((len(self.lengths), self.steps), pad_token_id, dtype=torch.long, device=device)
        # Per row, the step at which it stopped (``steps`` while it runs).
        self.stopped_at = torch.full((len(self.lengths),), self.steps, dtype=torch.long, device=device)
        self.lengths_tensor = torch.tensor(self.lengths, device=device)

    def record(self, step: int, next_tokens: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Keep ``step``'s tokens; returns the tokens to feed next and whether every row stopped."""
        if self.stop is None:
            if self.on_tokens is not None:
                self.on_tokens(sum(1 for length in self.lengths if length > step))
        else:
            running = self.stopped_at == self.steps
            if self.on_tokens is not None:
                self.on_tokens(int((running & (self.lengths_tensor > step)).sum()))
            # A stopped row is fed padding from then on; its output is not used.
            next_tokens = torch.where(running, next_tokens, torch.full_like(next_tokens, self.pad_token_id))
            self.stopped_at = torch.where(running & self.stop(next_tokens), step, self.stopped_at)
        self.tokens[:, step] = next_tokens
        return next_tokens, self.stop is not None and bool((self.stopped_at < self.steps).all())

    def rows(self) -> list[list[int]]:
        ends, tokens = self.stopped_at.cpu().tolist(), self.tokens.cpu().tolist()
        return [row[: min(length, end)] for row, length, end in zip(tokens, self.lengths, ends)]


def _decode_generic(
    model: torch.nn.Module,
    prefixes: Sequence[Sequence[int]],
    lengths: Sequence[int],
    choose_next: ChooseNext,
    *,
    pad_token_id: int,
    stop: StopCondition | None,
    on_tokens: Callable[[int], None] | None,
) -> list[list[int]]:
    """:func:`decode` for models :func:`split_model` does not know: the whole model each step,
    its returned KV cache fed back (a model without one gets the whole sequence again), and
    only the last position's logits where the model accepts ``logits_to_keep``."""
    device = model_device(model)
    lengths = list(lengths)
    rows, width, steps = len(prefixes), max(len(p) for p in prefixes), max(lengths)
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    for row, prefix in enumerate(prefixes):
        input_ids[row, width - len(prefix) :] = torch.tensor(prefix, dtype=torch.long)
        attention_mask[row, width - len(prefix) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    # Positions count real tokens only, so a left-padded row sees the positions it would alone.
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    extra = {"logits_to_keep": 1} if accepts_kwarg(model, "logits_to_keep") else {}

    chosen = _Chosen(lengths, pad_token_id, stop, on_tokens, device)
    step_ids, step_positions = input_ids, position_ids
    cache: tuple[str, Any] | None = None
    for step in range(steps):
        kwargs = dict(extra)
        if cache is not None:
            kwargs[cache[0]] = cache[1]
        outputs = model(
            input_ids=step_ids, attention_mask=attention_mask, position_ids=step_positions,
            use_cache=True, **kwargs,
        )
        next_tokens = choose_next(outputs.logits[:, -1, :], step)
        cache = returned_cache(outputs)
        del outputs
        next_tokens, all_stopped = chosen.record(step, next_tokens)
        if all_stopped:
            break
        next_positions = position_ids[:, -1:] + 1
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        position_ids = torch.cat([position_ids, next_positions], dim=-1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(next_positions)], dim=-1)
        if cache is not None:
            step_ids, step_positions = next_tokens[:, None], next_positions
        else:  # a model without a KV cache sees the whole sequence again
            step_ids, step_positions = input_ids, position_ids
    return chosen.rows()


def prefix_states(
    parts: ModelParts, sequences: Sequence[Sequence[int]], *, batch_size: int, pad_token_id: int
) -> list[PrefixState]:
    """Each sequence's keys and values from teacher-forced passes of ``batch_size`` sequences
    (similar lengths together), without the output layer."""
    states: list[PrefixState] = [[] for _ in sequences]
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        _, batch_states = forward_hidden(
            parts, [sequences[i] for i in rows], pad_token_id=pad_token_id, keep_states=True
        )
        for row, i in enumerate(rows):
            states[i] = batch_states[row]
    return states
