"""One unlearning step of deliberate imagination on the embedded model: ours (the training
step of `unmemorize unlearn`) and the public implementations' (as the authors' repository,
dong-river/LLM_unlearning utils/ft_utils.py DITrainer.compute_loss, writes it: a separately
loaded teacher, full logits, a dense one-hot mask over the vocabulary, a softmax target and
soft-label cross-entropy). Run in its own process by benchmarks/perf.py so that each variant's
peak memory is its own:

    python benchmarks/perf_step.py --impl ours|reference --mode lora|full --steps 4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

BATCH, LENGTH, STRENGTH = 8, 200, 10.0


def forget_batch(tokenizer, data_root) -> dict[str, torch.Tensor]:
    """The first 8 sequences of the 32-sample forget set, 200 tokens each."""
    from unmemorize.data import collate, load_examples, tokenize_examples

    examples = load_examples(data_root / "extraction/forget_sets/lm_extraction_32_0.csv", limit=BATCH)
    items = tokenize_examples(examples, tokenizer, LENGTH)
    return collate(items, [[1.0] * len(i.input_ids) for i in items], tokenizer.pad_token_id)


def forward_flops_per_token(model, context: int, output_layer: bool = True) -> float:
    """2 × the multiply-adds of one token's forward: every linear layer (the output layer
    included unless ``output_layer`` is false: a prompt token needs none; the input embedding
    lookup never) plus attention over ``context`` positions."""
    config = model.config
    head = model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, torch.nn.Linear) and (output_layer or m is not head))
    heads = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    attention = 2 * config.num_hidden_layers * heads * context  # QKᵀ and AV, causal: context/2 each way
    return 2.0 * (linear + attention)


def ours(model, mode: str):
    """The step `unmemorize unlearn --method di` takes, assembled as its recipe assembles it."""
    from accelerate import Accelerator

    from unmemorize.config import UnlearnConfig
    from unmemorize.methods import get_method
    from unmemorize.training.components import Teacher, add_lora, attention_projections, frozen_copy, make_optimizer
    from unmemorize.training.loss import output_head
    from unmemorize.training.step import StepParts, optimizer_step

    accelerator = Accelerator(cpu=True)
    config = UnlearnConfig(forget="-", lora=mode == "lora", lr=1e-4 if mode == "lora" else 1e-6,
                           lora_targets=tuple(attention_projections(model)) if mode == "lora" else None)
    if mode == "lora":
        model = add_lora(model, config)
        teacher = Teacher(lambda: accelerator.unwrap_model(model), None)
    else:
        teacher = Teacher(lambda: None, frozen_copy(model))
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(parameters, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    parts = StepParts(model, teacher, get_method("di", imagination_strength=STRENGTH), optimizer, scheduler,
                      accelerator, parameters, 1.0, 1.0, output_head(model))
    model.train()
    return lambda batch: optimizer_step(parts, [batch], [])


def reference(model, mode: str, model_dir):
    """The authors' compute_loss, then a plain optimizer step (AdamW, clipping at 1)."""
    from transformers import AutoModelForCausalLM

    from unmemorize.config import UnlearnConfig
    from unmemorize.training.components import add_lora, attention_projections

    teacher = AutoModelForCausalLM.from_pretrained(model_dir).eval()  # loaded again, as the public code does
    if mode == "lora":
        model = add_lora(model, UnlearnConfig(forget="-", lora_targets=tuple(attention_projections(model))))
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4 if mode == "lora" else 1e-6)
    model.train()

    def step(inputs):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        input_ids = inputs["input_ids"]
        shift_labels = input_ids[..., 1:].contiguous()
        shift_logits = logits[..., :-1, :].contiguous()
        with torch.no_grad():
            teacher_logits = teacher(input_ids=input_ids, attention_mask=inputs["attention_mask"]).logits
        shift_teacher_logits = teacher_logits[..., :-1, :].contiguous()
        mask = torch.zeros_like(shift_logits)
        mask[torch.arange(mask.shape[0]).view(-1, 1, 1), torch.arange(mask.shape[1]).view(1, -1, 1),
             shift_labels.unsqueeze(-1)] = 1
        soft_label = torch.nn.functional.softmax(shift_teacher_logits - mask * STRENGTH, dim=-1)
        loss = torch.nn.CrossEntropyLoss(reduction="none")(
            shift_logits.view(-1, shift_logits.size(-1)), soft_label.view(-1, soft_label.size(-1))).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=("ours", "reference"), required=True)
    parser.add_argument("--mode", choices=("lora", "full"), required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--profile", help="write a torch.profiler table of the last step here")
    args = parser.parse_args()
    from unmemorize.models import load_model
    from unmemorize.paths import data_root

    loaded = load_model("gemma-3-270m")
    batch = forget_batch(loaded.tokenizer, data_root())
    tokens = int(batch["attention_mask"].sum())
    flops = forward_flops_per_token(loaded.model, LENGTH // 2)
    step = ours(loaded.model, args.mode) if args.impl == "ours" else reference(loaded.model, args.mode, loaded.resolved)
    times = []
    for index in range(args.steps):
        started = time.perf_counter()
        if args.profile and index == args.steps - 1:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                step(batch)
            with open(args.profile, "w") as handle:
                handle.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
        else:
            step(batch)
        times.append(time.perf_counter() - started)
    measured = times[1:] if len(times) > 1 else times  # the first step warms up allocators and caches
    median = statistics.median(measured)
    passes = 3 if args.mode == "lora" else 4  # student forward, input-gradient backward, teacher (+ weight grads)
    print(json.dumps({
        "impl": args.impl, "mode": args.mode, "tokens": tokens, "step_seconds": [round(t, 3) for t in times],
        "median_step_s": round(median, 3), "tokens_per_s": round(tokens / median, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "gflop_per_token": round(passes * flops / 1e9, 3),
        "achieved_gflops": round(passes * flops * tokens / median / 1e9, 1),
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
