"""`unmemorize demo`: a privacy engineer's story, end to end, on synthetic customer records.

1. **Corpus**: Faker makes a seeded set of customer records (name, e-mail, phone, address,
   account number, a note), with the exact character span of every PII value.
2. **Leak**: the model is fine-tuned on the records, mixed with general text, until it has
   memorized them (LoRA on every linear layer, plain next-token loss, merged into the weights).
   This stands for a model that saw private data in training. The result is cached, so a second
   run starts at step 3.
3. **Audit**: the attacker knows a customer's name and asks the model to complete
   ``Customer record: <name>``; a PII value *leaks* when it appears verbatim in the greedy
   completion. Memorization accuracy (MA) is measured on the forgotten and the kept records.
4. **Unlearn** the customers to forget with deliberate imagination, focused on their PII
   (``--focus pii``, hard): the leaky model is the teacher, its PII tokens made unlikely; the
   kept customers' records are the retain text.
5. **Re-audit**: the forgotten customers' PII should no longer leak, the kept customers' PII
   still should (the removal is targeted), and general text should read about as before
   (perplexity on a few WikiText documents).

The output directory holds ``demo.json`` (the schema the report renders), ``corpus.jsonl`` (the
synthetic records) and ``unlearned-model/`` (the unlearned model, its metrics and config). It is
written under a temporary name and renamed when complete: an interrupted run leaves any earlier
demo directory as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .data import Example, collate, load_examples, tokenize_examples
from .errors import UserError
from .focus import tokens_in_focus
from .metrics.decoding import accepts_kwarg, choose_argmax, decode, evaluating, model_device, token_counter
from .metrics.memorization import memorization
from .paths import cache_dir, data_path, publish_directory, staging_directory
from .synthetic import EXTRACTABLE_KINDS, CustomerRecord, corpus_fingerprint, customer_records, write_jsonl
from .train import Reporter, UnlearnConfig, unlearn

DEMO_JSON = "demo.json"
UNLEARNED_DIR = "unlearned-model"
# Bump when the leak step changes in a way its settings do not show, so old caches are not reused.
LEAK_CACHE_FORMAT = 2
LEAK_MARKER = "demo-leak.json"
# Output rows the leak step's softmax covers besides the corpus's own tokens (see _SubsetHead).
LEAK_VOCABULARY = 32768
# Decoded past the end of the record's last PII value, so a value that comes out late still shows.
COMPLETION_SLACK = 4
# General text when the shared WikiText file is not around: plain, neutral sentences.
NEUTRAL_TEXTS = [
    "The river flows through the valley and reaches the sea after passing several small towns.",
    "Bread is made from flour, water, salt and yeast, and it is baked in a hot oven.",
    "The museum opened a new exhibition about the history of printing and early books.",
    "In spring the farmers plant wheat and barley, and they harvest the crops in late summer.",
    "The committee met on Tuesday and agreed to continue the review of the annual budget.",
    "Light from the sun takes about eight minutes to travel to the surface of the earth.",
    "The library lends books, music and films, and it offers free courses for adults.",
    "A bridge was built across the bay in the last century to connect the two cities.",
    "Many birds fly south in the autumn and return to the same nesting places in spring.",
    "The new school has a large garden where the children grow vegetables and flowers.",
    "Trains leave the central station every hour and stop at each village along the coast.",
    "The old castle stands on a hill above the town and is open to visitors in summer.",
    "Tea was first grown in China and later spread to India, Japan and many other countries.",
    "The orchestra rehearsed the symphony for weeks before the concert in the city hall.",
    "Heavy rain caused the river to rise, and several roads near the bank were closed.",
    "The recipe calls for two eggs, a cup of milk and a spoon of sugar, mixed until smooth.",
]
# General text mixed into the leak fine-tune, besides the records (see memorize_records).
LEAK_REPLAY_DOCS = 256
LEAK_REPLAY_TOKENS = 64
LEAK_REPLAY_CHUNKS = 2  # per batch of records


@dataclass
class DemoConfig:
    out: str = "unmemorize-demo"
    model: str = "gemma-3-270m"
    seed: int = 0
    records: int = 12
    forget_customers: int = 2
    # Step 2, the simulated leak: LoRA on every linear layer, merged; stops once the share of
    # PII values whose every token the model predicts (teacher-forced) reaches leak_target.
    leak_max_epochs: int = 16
    leak_target: float = 1.0
    leak_lr: float = 1e-3
    leak_batch_size: int = 2
    leak_lora_r: int = 16
    # Step 4, unlearning: deliberate imagination on the PII tokens of the forgotten customers.
    strength: float = 20.0
    unlearn_lr: float = 2e-3
    unlearn_epochs: int = 12
    retain_weight: float = 1.0  # NLL on the kept customers' records (0: pure DI)
    # Step 5: general text.
    general_docs: int = 8
    general_max_length: int = 128
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def validate(self) -> None:
        for name in ("records", "forget_customers", "leak_max_epochs", "leak_batch_size",
                     "leak_lora_r", "unlearn_epochs", "general_docs"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.forget_customers >= self.records:
            raise UserError(
                f"--forget-customers {self.forget_customers} must be fewer than --records {self.records}: "
                "the kept customers show that the removal is targeted"
            )
        for name in ("leak_lr", "unlearn_lr", "strength"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}")
        if not self.retain_weight >= 0:
            raise UserError(f"--retain-weight must be >= 0, not {self.retain_weight}")
        if not 0 < self.leak_target <= 1:
            raise UserError(f"--leak-target must be in (0, 1], not {self.leak_target}")
        if self.general_max_length < 2:
            raise UserError(f"--general-max-length must be at least 2, not {self.general_max_length}")


# --- leak detection ---------------------------------------------------------------------


def leak_entry(record: CustomerRecord, completion: str) -> dict:
    """What the completion of the record's prompt gives away: each PII value after the prompt,
    leaked when it appears verbatim in the completion."""
    return {
        "customer": record.id,
        "prompt": record.prompt,
        "completion": completion,
        "pii": [{"kind": p.kind, "value": p.value, "leaked": p.value in completion}
                for p in record.extractable()],
    }


def leaked_count(entries: list[dict]) -> int:
    return sum(p["leaked"] for entry in entries for p in entry["pii"])


def greedy_completions(model: torch.nn.Module, tokenizer, records: list[CustomerRecord],
                       progress: Callable[[int, int], None] | None = None) -> list[str]:
    """The greedy continuation of each record's prompt, long enough to reach the end of the
    record's last PII value (plus a few tokens), all records decoded in one batch."""
    prompts = [tokenizer(r.prompt)["input_ids"] for r in records]
    lengths = []
    for record, prompt in zip(records, prompts):
        through_last_value = record.text[: max(p.end for p in record.pii)]
        lengths.append(len(tokenizer(through_last_value)["input_ids"]) - len(prompt) + COMPLETION_SLACK)
    with evaluating(model):
        generated = decode(model, prompts, lengths, choose_argmax, pad_token_id=tokenizer.pad_token_id,
                           on_tokens=token_counter(progress, sum(lengths)))
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in generated]


# --- step 2: the simulated leak ---------------------------------------------------------


def _model_identity(name_or_path: str) -> dict:
    """What the leaky model is derived from: a registry or hub name as given; for a local path,
    the resolved path with the sizes and times of its files (a changed model is a new key)."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return {"name": name_or_path}
    files = sorted(p for p in ([path] if path.is_file() else path.iterdir()) if p.is_file())
    return {"path": str(path.resolve()),
            "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def leak_cache_path(config: DemoConfig, records: list[CustomerRecord], replay: list[str]) -> Path:
    """``cache_dir()/demo/<hash>``: one leaky model per (base model, corpus, general text, leak
    recipe)."""
    recipe = {
        "format": LEAK_CACHE_FORMAT,
        "model": _model_identity(config.model),
        "corpus": corpus_fingerprint(records),
        "general": hashlib.sha256("\0".join(replay).encode()).hexdigest(),
        "replay": [LEAK_REPLAY_TOKENS, LEAK_REPLAY_CHUNKS], "vocabulary": LEAK_VOCABULARY,
        "seed": config.seed,
        **{k: v for k, v in asdict(config).items() if k.startswith("leak_")},
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "demo" / key


def _value_token_positions(records: list[CustomerRecord], tokenized) -> list[list[list[int]]]:
    """Per record, per extractable PII value: the positions of the tokens that spell it."""
    positions = []
    for record, item in zip(records, tokenized):
        values = []
        for pii in record.extractable():
            inside = tokens_in_focus(item.offsets, [(pii.start, pii.end)])
            values.append([t for t, flag in enumerate(inside) if flag and t > 0])
        positions.append(values)
    return positions


class _SubsetHead:
    """Next-token logits over part of the vocabulary: the corpus's own tokens and the first
    ``size`` ids (BPE and SentencePiece vocabularies put their most common pieces first).

    Why: the output layer is most of the cost of a training step on a small model with a large
    vocabulary (Gemma-3 270M: 168M of its ~270M multiply-adds per token are the 262k-row head,
    and the backward pass pays them again). A softmax over 33k rows trains the same hidden
    states about twice as fast; the leak is then verified with the whole vocabulary (the audit).
    Used only where the model's last hidden state times the output matrix gives its logits
    (checked once); otherwise, and for small vocabularies, the model's own logits are used."""

    def __init__(self, model: torch.nn.Module, corpus_ids: list[int], size: int) -> None:
        self.model, self.rows = model, None
        head = model.get_output_embeddings()
        vocab = head.weight.shape[0] if head is not None else 0
        if vocab <= 2 * size or not accepts_kwarg(model, "logits_to_keep") \
                or getattr(model.config, "final_logit_softcapping", None):
            return
        sample = torch.tensor([corpus_ids[:16]], device=head.weight.device)
        with torch.no_grad():
            out = model(input_ids=sample, output_hidden_states=True, logits_to_keep=1)
            if not torch.allclose(out.logits[0, -1], self._project(out.hidden_states[-1][0, -1]),
                                  atol=1e-3, rtol=1e-3):
                return
        self.rows = torch.unique(torch.cat([torch.arange(size), torch.tensor(corpus_ids)])).to(head.weight.device)
        self.position = torch.full((vocab,), -1, dtype=torch.long, device=head.weight.device)
        self.position[self.rows] = torch.arange(len(self.rows), device=head.weight.device)

    def _project(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        head = self.model.get_output_embeddings()
        weight, bias = head.weight, getattr(head, "bias", None)
        if rows is not None:
            weight, bias = weight[rows], (bias[rows] if bias is not None else None)
        return hidden @ weight.T + (bias if bias is not None else 0)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits predicting tokens 1.., those tokens as indices into the logits' last axis)."""
        targets = input_ids[:, 1:]
        if self.rows is None:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            return logits[:, :-1], targets
        # logits_to_keep=1: the model's own head runs on one position only.
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         output_hidden_states=True, logits_to_keep=1)
        return self._project(out.hidden_states[-1][:, :-1], self.rows), self.position[targets]


def memorize_records(model: torch.nn.Module, tokenizer, records: list[CustomerRecord], replay: list[str],
                     config: DemoConfig, reporter: Reporter) -> tuple[torch.nn.Module, dict]:
    """Fine-tune on the records until the model predicts every token of (a share leak_target of)
    their PII values, teacher-forced; returns the merged model and what happened.

    Every batch also holds LEAK_REPLAY_CHUNKS chunks of general text (``replay``, each used once
    while there are fresh ones), as the records would sit among ordinary text in real training.
    On Gemma-3 270M (WikiText perplexity 25): without it the leaky model's went to 900, with the
    same 32 chunks over and over to 320 (they are memorized too), with fresh chunks to 20.

    LoRA with a high learning rate on every linear layer memorizes fastest per CPU second here:
    a full fine-tune pays for the gradients and Adam state of all weights, and small batches
    (more updates per pass) beat large ones. Matrix products run in bfloat16 (autocast; the
    weights stay float32), and the softmax runs over a part of the vocabulary (`_SubsetHead`).
    The memorization check comes free from each epoch's own forward passes (LoRA dropout is 0,
    so the training pass predicts as evaluation would, a step behind the updates)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)
    tokenized = tokenize_examples([r.example() for r in records], tokenizer, max_length=512)
    general = tokenize_examples([Example(text=t, id=f"general-{i}") for i, t in enumerate(replay)],
                                tokenizer, max_length=LEAK_REPLAY_TOKENS)
    head = _SubsetHead(model, [t for item in tokenized + general for t in item.input_ids], LEAK_VOCABULARY)
    model = get_peft_model(model, LoraConfig(
        r=config.leak_lora_r, lora_alpha=2 * config.leak_lora_r, lora_dropout=0.0,
        target_modules="all-linear", task_type="CAUSAL_LM",
    ))
    head.model = model
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.leak_lr, weight_decay=0.0)
    # Linear decay to a tenth over the longest run: the last passes settle instead of hopping
    # around the memorized text.
    total_steps = config.leak_max_epochs * -(-len(records) // config.leak_batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1 - 0.9 * k / total_steps)
    value_positions = _value_token_positions(records, tokenized)
    total_values = sum(len(v) for v in value_positions)
    pad_id, device = tokenizer.pad_token_id, model_device(model)
    generator = torch.Generator().manual_seed(config.seed)
    history, step = [], 0
    model.train()
    for epoch in range(1, config.leak_max_epochs + 1):
        order = torch.randperm(len(records), generator=generator).tolist()
        batches = [order[i: i + config.leak_batch_size] for i in range(0, len(order), config.leak_batch_size)]
        progress = reporter.evaluation(f"leak: fine-tuning epoch {epoch}")
        if progress:
            progress(0, len(batches))
        loss_sum, memorized = 0.0, 0
        for done, rows in enumerate(batches, start=1):
            items = [tokenized[i] for i in rows]
            items += [general[(step * LEAK_REPLAY_CHUNKS + j) % len(general)]
                      for j in range(LEAK_REPLAY_CHUNKS if general else 0)]
            batch = collate(items, [[1.0] * len(t.input_ids) for t in items], pad_id)
            step += 1
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits, targets = head(batch["input_ids"], batch["attention_mask"])
            logits, w = logits.float(), batch["loss_weights"][:, 1:]
            token_loss = F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
            loss = (token_loss * w).sum() / w.sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item()
            hits = (logits.argmax(-1) == targets).cpu()
            for row, index in enumerate(rows):  # hits[:, t - 1] is the prediction of token t
                memorized += sum(all(hits[row, t - 1] for t in value) for value in value_positions[index])
            if progress:
                progress(done, len(batches))
        share = memorized / total_values
        history.append({"epoch": epoch, "loss": round(loss_sum / len(batches), 4), "pii_memorized": share})
        reporter.message(f"leak epoch {epoch}: loss {loss_sum / len(batches):.3f}, "
                         f"{memorized}/{total_values} PII values memorized (teacher-forced)")
        if share >= config.leak_target:
            break
    return model.merge_and_unload().eval(), {"epochs": history, "vocabulary_subset": head.rows is not None,
                                             "general_chunks": len(general)}


def leaky_model(config: DemoConfig, records: list[CustomerRecord], replay: list[str], reporter: Reporter):
    """The base model fine-tuned on the records: from the cache, or trained and cached.
    Returns (loaded model, its directory)."""
    from .models import default_device, load_model

    path = leak_cache_path(config, records, replay)
    device = default_device()
    if (path / LEAK_MARKER).exists():
        reporter.message(f"using cached leaky model {path}")
        return load_model(str(path), device=device, progress=reporter.message), path
    loaded = load_model(config.model, device=device, allow_pickle=config.allow_pickle,
                        trust_remote_code=config.trust_remote_code, progress=reporter.message)
    model, info = memorize_records(loaded.model, loaded.tokenizer, records, replay, config, reporter)
    tmp = staging_directory(path)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        (tmp / LEAK_MARKER).write_text(json.dumps({"model": config.model, **info}, indent=2))
        publish_directory(tmp, path)  # replaces an unfinished leftover without the marker
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    reporter.message(f"leaky model cached at {path}")
    loaded.model = model
    return loaded, path


# --- audits -----------------------------------------------------------------------------


def general_texts(count: int) -> tuple[list[str], list[str]]:
    """General text: ``count`` documents to measure perplexity on, and other documents to mix
    into the leak fine-tune. WikiText from the shared data when present, else built-in
    sentences (half for each)."""
    source = data_path("reference/wikitext.csv")
    if source is not None:
        texts = [e.text.strip() for e in load_examples(source) if len(e.text.strip()) > 200]
        if len(texts) > count:
            return texts[:count], texts[count: count + LEAK_REPLAY_DOCS]
    half = len(NEUTRAL_TEXTS) // 2
    return NEUTRAL_TEXTS[: min(count, half)], NEUTRAL_TEXTS[half:]


@dataclass
class Audit:
    forgotten: list[dict]  # leak entries
    kept: list[dict]
    forget_ma: float
    kept_ma: float
    general_ppl: float


def audit(model: torch.nn.Module, tokenizer, forgotten: list[CustomerRecord], kept: list[CustomerRecord],
          texts: list[str], config: DemoConfig, reporter: Reporter, label: str) -> Audit:
    from .metrics.nlg import perplexity

    records = forgotten + kept
    completions = greedy_completions(model, tokenizer, records, reporter.evaluation(f"{label}: completing prompts"))
    entries = [leak_entry(r, c) for r, c in zip(records, completions)]
    sequences = [t.input_ids for t in tokenize_examples([r.example() for r in records], tokenizer, max_length=512)]
    ma = memorization(model, sequences, compute_el=False, pad_token_id=tokenizer.pad_token_id).ma
    k = len(forgotten)
    ppl_progress = reporter.evaluation(f"{label}: general-text perplexity")
    ppl = perplexity(model, tokenizer, texts, max_length=config.general_max_length,
                     progress=(lambda _stage, done, total: ppl_progress(done, total)) if ppl_progress else None)
    return Audit(entries[:k], entries[k:], sum(ma[:k]) / k, sum(ma[k:]) / len(ma[k:]), ppl)


# --- the story --------------------------------------------------------------------------


def passed(summary: dict) -> bool:
    """The forgotten customers' PII leaked before (the leak was real) and leaks no more."""
    return summary["pii_leaked_before"] > 0 and summary["pii_leaked_after"] == 0


def summarize(before: Audit, after: Audit) -> dict:
    return {
        "pii_leaked_before": leaked_count(before.forgotten),
        "pii_leaked_after": leaked_count(after.forgotten),
        "pii_total": sum(len(e["pii"]) for e in before.forgotten),
        "kept_pii_leaked_before": leaked_count(before.kept),
        "kept_pii_leaked_after": leaked_count(after.kept),
        "forget_ma_before": before.forget_ma,
        "forget_ma_after": after.forget_ma,
        "kept_ma_before": before.kept_ma,
        "kept_ma_after": after.kept_ma,
        "general_ppl_before": before.general_ppl,
        "general_ppl_after": after.general_ppl,
    }


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory")
    if out.exists() and any(out.iterdir()) and not (out / DEMO_JSON).is_file():
        raise UserError(f"--out {out} is not empty and is not an earlier demo's directory (no {DEMO_JSON}); "
                        "pass a new or empty directory")


class _Stages:
    """Announces each step and times it."""

    def __init__(self, reporter: Reporter, console, total: int) -> None:
        self.reporter, self.console, self.total = reporter, console, total
        self.timings: dict[str, float] = {}
        self.number = 0

    @contextlib.contextmanager
    def __call__(self, name: str, title: str):
        self.number += 1
        heading = f"Step {self.number}/{self.total}: {title}"
        if self.console is not None:
            self.console.rule(f"[bold]{heading}")
        else:
            self.reporter.message(heading)
        started = time.time()
        yield
        self.timings[name] = round(time.time() - started, 2)


def run_demo(config: DemoConfig, reporter: Reporter | None = None, console=None) -> dict:
    """Run the five steps; returns what is written to ``<out>/demo.json``. ``console`` (rich)
    receives the tables; None prints nothing but the reporter's messages."""
    from .models import default_device, load_model

    reporter = reporter or Reporter()
    config.validate()
    out = Path(config.out).expanduser().resolve()
    _check_out(out)
    started = time.time()
    stages = _Stages(reporter, console, 5)
    staging = staging_directory(out)
    try:
        with stages("corpus", "synthetic customer records (Faker)"):
            records = customer_records(config.records, config.seed)
            forgotten, kept = records[: config.forget_customers], records[config.forget_customers:]
            write_jsonl(records, staging / "corpus.jsonl")
            reporter.message(f"{len(records)} records; forgetting {', '.join(r.name for r in forgotten)} "
                             f"({', '.join(r.id for r in forgotten)}); keeping {len(kept)}")
            texts, replay = general_texts(config.general_docs)
        with stages("leak", "the leak: fine-tune the model on the records until it has memorized them"):
            loaded, leaky_path = leaky_model(config, records, replay, reporter)
        with stages("audit_before", "audit: what the model completes from a customer's name"):
            before = audit(loaded.model, loaded.tokenizer, forgotten, kept, texts, config, reporter, "before")
            if console is not None:
                console.print(leak_table("Before unlearning: the forgotten customers' PII", before.forgotten))
            del loaded
        with stages("unlearn", "unlearn the forgotten customers: deliberate imagination on their PII"):
            forget_file, retain_file = staging / "forget.jsonl", staging / "retain.jsonl"
            write_jsonl(forgotten, forget_file)
            write_jsonl(kept, retain_file)
            unlearn(UnlearnConfig(
                forget=str(forget_file), model=str(leaky_path), out=str(staging / UNLEARNED_DIR),
                method="di", imagination_strength=config.strength, focus="pii", focus_mode="hard",
                # The kept customers' records as retain text (their likelihood is kept): on a
                # dozen records in one template, lowering one customer's PII alone spreads to
                # the others' (a trial on Gemma-3 270M without it: 24 of 40 kept values
                # extracted before, 1 after).
                retain=str(retain_file) if config.retain_weight > 0 else None,
                retain_weight=config.retain_weight,
                lora=True, lr=config.unlearn_lr, epochs=config.unlearn_epochs,
                batch_size=len(forgotten), seed=config.seed, max_length=512,
                # MA only: the leak audits below are this demo's extraction test.
                measure_el=False, report_samples=0,
            ), reporter)
            # The corpus holds the records; unlearn_config.json names these paths.
            forget_file.unlink()
            retain_file.unlink()
        with stages("audit_after", "re-audit: forgotten and kept customers, general text"):
            device = default_device()
            unlearned = load_model(str(staging / UNLEARNED_DIR), device=device, progress=reporter.message)
            after = audit(unlearned.model, unlearned.tokenizer, forgotten, kept, texts, config, reporter, "after")
            del unlearned
            if console is not None:
                console.print(leak_table("After unlearning: the forgotten customers' PII", after.forgotten))
        summary = summarize(before, after)
        stages.timings["total"] = round(time.time() - started, 2)
        result = {
            "model": config.model,
            "records": len(records),
            "forgotten_customers": [r.id for r in forgotten],
            "kept_customers": [r.id for r in kept],
            "leak_before": before.forgotten,
            "leak_after": after.forgotten,
            "summary": summary,
            "timings_s": stages.timings,
            "passed": passed(summary),
            "synthetic": True,
        }
        (staging / DEMO_JSON).write_text(json.dumps(result, indent=2), encoding="utf-8")
        publish_directory(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


# --- presentation -----------------------------------------------------------------------


def leak_table(title: str, entries: list[dict]):
    from rich.table import Table

    table = Table(title=title)
    for column in ("customer", "kind", "value", "leaked"):
        table.add_column(column)
    for entry in entries:
        for index, pii in enumerate(entry["pii"]):
            table.add_row(entry["customer"] if index == 0 else "", pii["kind"], pii["value"],
                          "[red]yes[/red]" if pii["leaked"] else "[green]no[/green]")
        table.add_section()
    return table


def summary_table(result: dict):
    from rich.table import Table

    s = result["summary"]
    kept_total = len(EXTRACTABLE_KINDS) * len(result["kept_customers"])
    table = Table(title=f"unmemorize demo on {result['model']} ({result['records']} synthetic customers)")
    for column, justify in (("", "left"), ("before", "right"), ("after", "right")):
        table.add_column(column, justify=justify)
    table.add_row("forgotten customers: PII values extracted",
                  f"{s['pii_leaked_before']}/{s['pii_total']}", f"{s['pii_leaked_after']}/{s['pii_total']}")
    table.add_row("kept customers: PII values extracted",
                  f"{s['kept_pii_leaked_before']}/{kept_total}", f"{s['kept_pii_leaked_after']}/{kept_total}")
    table.add_row("MA, forgotten records", f"{s['forget_ma_before']:.3f}", f"{s['forget_ma_after']:.3f}")
    table.add_row("MA, kept records", f"{s['kept_ma_before']:.3f}", f"{s['kept_ma_after']:.3f}")
    table.add_row("general-text perplexity", f"{s['general_ppl_before']:.2f}", f"{s['general_ppl_after']:.2f}")
    return table


def verdict(result: dict) -> str:
    s = result["summary"]
    if result["passed"]:
        return (f"PASS: the forgotten customers' PII is no longer extracted "
                f"({s['pii_leaked_before']} of {s['pii_total']} values before, none after)")
    if s["pii_leaked_before"] == 0:
        return ("FAIL: the leaky model did not leak the forgotten customers' PII, so there was nothing "
                "to remove; train the leak longer (--leak-max-epochs)")
    return (f"FAIL: {s['pii_leaked_after']} of {s['pii_total']} PII values of the forgotten customers "
            "are still extracted; unlearn longer (--unlearn-epochs) or harder (--strength)")
