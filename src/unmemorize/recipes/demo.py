"""`unmemorize demo`: a privacy engineer's story, end to end, on synthetic customer records.

1. **Corpus**: Faker makes a seeded set of customer records (name, e-mail, phone, address,
   account number, a note), with the exact character span of every PII value.
2. **Leak**: the model is fine-tuned on the records (method ``finetune`` through the same training
   loop as unlearning), with general text as the retain set, until it has memorized their PII
   (LoRA on every linear layer, merged into the weights). This stands for a model that saw private
   data in training. The result is cached, so a second run starts at step 3.
3. **Audit**: the attacker knows a customer's name and asks the model to complete
   ``Customer record: <name>``; a PII value *leaks* when it appears verbatim in the greedy
   completion. Memorization accuracy (MA) is measured on the forgotten and the kept records, and
   ``unmemorize scan`` of the records (``OUT/scan``) shows which records and PII spans the model
   reproduces, as a privacy engineer would find them without knowing which leak.
4. **Unlearn** the customers to forget with deliberate imagination, focused on their PII
   (``--focus pii``, hard): the leaky model is the teacher, its PII tokens made unlikely; the
   kept customers' records are the retain text.
5. **Re-audit**: the forgotten customers' PII should no longer leak, the kept customers' PII
   still should (the removal is targeted), and general text should read about as before
   (perplexity on a few WikiText documents).

The output directory holds ``demo.json`` (the schema the report renders), ``corpus.jsonl`` (the
synthetic records), ``scan/`` (the scan's forget set and report) and ``unlearned-model/`` (the unlearned model, its metrics and config). It is
written under a temporary name and renamed when complete: an interrupted run leaves any earlier
demo directory as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ..config import DemoConfig, ScanConfig, UnlearnConfig
from ..data import Example, load_examples, tokenize_examples
from ..errors import UserError
from ..events import Events
from ..metrics.decoding import choose_argmax, decode, evaluating, token_counter
from ..metrics.leakage import MIN_FRAGMENT, LeakDetector, exposed_count
from ..metrics.memorization import memorization
from ..metrics.uncertainty import proportion_interval
from ..paths import cache_dir, data_path, publish_directory, staging_directory
from ..synthetic import (EXTRACTABLE_KINDS, CustomerRecord, corpus_fingerprint, customer_records, faker_vocabulary,
                         write_jsonl)
from .unlearn import unlearn

DEMO_JSON = "demo.json"
UNLEARNED_DIR = "unlearned-model"
# Bump when the leak step changes in a way its settings do not show, so old caches are not reused.
LEAK_CACHE_FORMAT = 4
LEAK_MARKER = "demo-leak.json"
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
# The leak fine-tune's softmax spans the records' and general text's own tokens plus the first
# 32k ids: on Gemma's 262k vocabulary the output layer is most of a step, and the leak only has
# to make the model memorize (the audit then checks with the whole vocabulary).
LEAK_VOCABULARY = 32768
# General text in the leak fine-tune (its retain set): documents cut to this many tokens.
LEAK_REPLAY_DOCS = 256
LEAK_REPLAY_TOKENS = 64
WIKITEXT = "reference/wikitext.csv"


# --- leak detection ---------------------------------------------------------------------


def leak_detector(records: list[CustomerRecord]) -> LeakDetector:
    """Every customer's PII (the name included: another customer's name in an answer is PII
    too); the public text is the records' template with every value cut out, and the common
    words are those Faker builds addresses and e-mail domains from ("Curve", "-port")."""
    public = []
    for record in records:
        edges = [0, *(i for p in record.pii for i in (p.start, p.end)), len(record.text)]
        public += [record.text[a:b] for a, b in zip(edges[::2], edges[1::2])]
    return LeakDetector({r.id: [(p.kind, p.value) for p in r.pii] for r in records}, public,
                        common_words=faker_vocabulary())


def leak_entry(record: CustomerRecord, completion: str, detector: LeakDetector) -> dict:
    """What the completion of the record's prompt gives away: each of the customer's PII values
    after the prompt (``leaked``: verbatim; ``exposed``: verbatim or an identifying fragment of
    at least MIN_FRAGMENT letters or digits), and ``others``: any other customer's values in it."""
    return detector.entry(record.id, record.prompt, completion, EXTRACTABLE_KINDS)


def leaked_count(entries: list[dict]) -> int:
    """The customers' own values that come out verbatim."""
    return sum(p["leaked"] for entry in entries for p in entry["pii"])


def greedy_completions(model: torch.nn.Module, tokenizer, records: list[CustomerRecord],
                       progress=None) -> list[str]:
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
        "replay": LEAK_REPLAY_TOKENS, "vocabulary": LEAK_VOCABULARY, "seed": config.seed,
        **{k: v for k, v in dataclasses.asdict(config).items() if k.startswith("leak_")},
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "demo" / key


def pii_extracted(model: torch.nn.Module, tokenizer, records: list[CustomerRecord]) -> float:
    """The share of the records' PII values that the greedy completion of their prompts
    reproduces verbatim: the audit's own measure, so the leak stops only when the attack works."""
    detector = leak_detector(records)
    entries = [leak_entry(r, c, detector) for r, c in zip(records, greedy_completions(model, tokenizer, records))]
    return leaked_count(entries) / sum(len(e["pii"]) for e in entries)


def _replay_chunks(texts: list[str], tokenizer) -> list[str]:
    """Each general-text document cut to its first LEAK_REPLAY_TOKENS tokens (at a token edge)."""
    chunks = []
    for item in tokenize_examples([Example(text=t, id=str(i)) for i, t in enumerate(texts)], tokenizer,
                                  max_length=LEAK_REPLAY_TOKENS):
        chunks.append(item.example.text[: item.offsets[-1][1]])
    return chunks


def leaky_model(config: DemoConfig, records: list[CustomerRecord], replay: list[str], staging: Path,
                events: Events) -> Path:
    """The base model fine-tuned on the records until their PII is memorized: from the cache, or
    trained and cached. Returns its directory.

    The records sit among general text (the retain set: fresh WikiText chunks in every step), as
    they would in real training data; on Gemma-3 270M without it the leaky model's WikiText
    perplexity went from 25 to 900. LoRA with a high learning rate on every linear layer
    memorizes fastest per CPU second; the learning rate decays linearly to a tenth, so the last
    passes settle instead of hopping around the memorized text."""
    from ..models import load_tokenizer

    path = leak_cache_path(config, records, replay)
    if (path / LEAK_MARKER).exists():
        events.message(f"using cached leaky model {path}")
        return path
    write_jsonl(records, staging / "leak-records.jsonl")
    general = _replay_chunks(replay, load_tokenizer(config.model))
    (staging / "leak-general.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in general))
    tokenizer = load_tokenizer(config.model)

    def memorized(network: torch.nn.Module) -> tuple[dict[str, float], str | None]:
        share = pii_extracted(network, tokenizer, records)
        events.message(f"leak: {share:.0%} of the records' PII values extracted from their names")
        return {"pii_extracted": share}, "PII extracted" if share >= config.leak_target else None

    metrics = unlearn(UnlearnConfig(
        model=config.model, forget=str(staging / "leak-records.jsonl"), retain=str(staging / "leak-general.jsonl"),
        out=str(path), overwrite=True, method="finetune", lora=config.leak_lora, lora_r=config.leak_lora_r,
        lora_alpha=2.0 * config.leak_lora_r, lora_dropout=0.0, lora_targets=("all-linear",) if config.leak_lora else None, lr=config.leak_lr,
        softmax_vocabulary=LEAK_VOCABULARY, lr_schedule="linear", epochs=config.leak_max_epochs, batch_size=config.leak_batch_size, seed=config.seed,
        max_length=512, measure_el=False, report_samples=0, allow_pickle=config.allow_pickle,
        trust_remote_code=config.trust_remote_code,
    ), events, epoch_check=memorized)
    for name in ("leak-records.jsonl", "leak-general.jsonl"):
        (staging / name).unlink()
    marker = {"model": config.model, "epochs": len(metrics["epochs"]), "steps": len(metrics["steps"]),
              "stopped_because": metrics["stopped_because"], "general_chunks": len(general)}
    (path / LEAK_MARKER).write_text(json.dumps(marker, indent=2))
    events.message(f"leaky model cached at {path}")
    return path


# --- audits -----------------------------------------------------------------------------


def general_texts(count: int) -> tuple[list[str], list[str], str]:
    """General text: ``count`` documents to measure perplexity on, other documents to mix into
    the leak fine-tune, and where they come from. WikiText from the data location when present;
    without it, built-in sentences (half for each), which the demo says and records: perplexity
    on 8 plain sentences is a weak check of general ability, and the leak has less to mix in."""
    source = data_path(WIKITEXT)
    if source is not None:
        texts = [e.text.strip() for e in load_examples(source) if len(e.text.strip()) > 200]
        if len(texts) > count:
            return texts[:count], texts[count: count + LEAK_REPLAY_DOCS], f"${{UNMEMORIZE_DATA}}/{WIKITEXT}"
    half = len(NEUTRAL_TEXTS) // 2
    return NEUTRAL_TEXTS[: min(count, half)], NEUTRAL_TEXTS[half:], "built-in sentences"


@dataclasses.dataclass
class Audit:
    forgotten: list[dict]  # leak entries
    kept: list[dict]
    forget_ma: float
    kept_ma: float
    general_ppl: float


def audit(model: torch.nn.Module, tokenizer, forgotten: list[CustomerRecord], kept: list[CustomerRecord],
          texts: list[str], config: DemoConfig, events: Events, label: str) -> Audit:
    from ..metrics.nlg import perplexity

    records = forgotten + kept
    completions = greedy_completions(model, tokenizer, records, events.progress(f"{label}: completing prompts"))
    detector = leak_detector(records)
    entries = [leak_entry(r, c, detector) for r, c in zip(records, completions)]
    sequences = [t.input_ids for t in tokenize_examples([r.example() for r in records], tokenizer, max_length=512)]
    ma = memorization(model, sequences, compute_el=False, pad_token_id=tokenizer.pad_token_id).ma
    k = len(forgotten)
    ppl_progress = events.progress(f"{label}: general-text perplexity")
    ppl = perplexity(model, tokenizer, texts, max_length=config.general_max_length,
                     progress=lambda _stage, done, total: ppl_progress(done, total))
    return Audit(entries[:k], entries[k:], sum(ma[:k]) / k, sum(ma[k:]) / len(ma[k:]), ppl)


def audit_directory(path: Path, forgotten, kept, texts, config: DemoConfig, events: Events, label: str) -> Audit:
    from ..models import default_device, load_model

    loaded = load_model(str(path), device=default_device(), progress=events.message)
    return audit(loaded.model, loaded.tokenizer, forgotten, kept, texts, config, events, label)


def scan_records(config: DemoConfig, leaky: Path, staging: Path, events: Events) -> dict:
    """`unmemorize scan` of the records with the leaky model (OUT/scan): which records it
    reproduces (MA above ``config.scan_ma``) and which of their PII values; the records are
    synthetic, so the scan keeps their text."""
    from .scan import run_scan

    summary = run_scan(ScanConfig(model=str(leaky), corpus=(str(staging / "corpus.jsonl"),), out=str(staging / "scan"),
                                  score="ma", threshold=config.scan_ma, pii=True, window=512, show_text=True,
                                  extraction_prefix=16, extraction_suffix=16, threads=config.threads), events)
    flagged = [json.loads(line) for line in (staging / "scan" / "forget.jsonl").read_text(encoding="utf-8").splitlines()]
    reproduced = sum(s["reproduced"] for record in flagged for s in record["spans"])
    spans = sum(len(record["spans"]) for record in flagged)
    events.message(f"scan: {len(flagged)} of {summary['windows']} records memorized (MA > {config.scan_ma:g}); "
                   f"{reproduced} of the {spans} PII spans in them reproduced token for token")
    return {"flagged": [record["document"] for record in flagged], "records": summary["windows"],
            "threshold_ma": config.scan_ma, "pii_spans": spans, "pii_reproduced": reproduced}


# --- the story --------------------------------------------------------------------------


def passed(summary: dict, kept_share: float) -> bool:
    """Every PII value of the forgotten customers leaked before (the leak was real) and nothing
    identifying anyone comes out of their completions after — their own values whole or in part,
    or another customer's; and the removal is targeted: at least ``kept_share`` of the kept
    customers' values that were extracted before still are."""
    return (summary["pii_leaked_before"] == summary["pii_total"] > 0 and summary["pii_exposed_after"] == 0
            and summary["kept_pii_leaked_after"] >= kept_share * summary["kept_pii_leaked_before"])


def _wilson(count: int, total: int) -> list[float] | None:
    return list(proportion_interval(count, total)) if total else None


def summarize(before: Audit, after: Audit) -> dict:
    kept_before, kept_after = leaked_count(before.kept), leaked_count(after.kept)
    summary = {
        "pii_total": sum(len(e["pii"]) for e in before.forgotten),
        "pii_leaked_before": leaked_count(before.forgotten),
        "pii_leaked_after": leaked_count(after.forgotten),
        # Values of anyone an attacker learns from the forgotten customers' completions.
        "pii_exposed_before": exposed_count(before.forgotten),
        "pii_exposed_after": exposed_count(after.forgotten),
        "kept_pii_total": sum(len(e["pii"]) for e in before.kept),
        "kept_pii_leaked_before": kept_before,
        "kept_pii_leaked_after": kept_after,
        "forget_ma_before": before.forget_ma,
        "forget_ma_after": after.forget_ma,
        "kept_ma_before": before.kept_ma,
        "kept_ma_after": after.kept_ma,
        "general_ppl_before": before.general_ppl,
        "general_ppl_after": after.general_ppl,
    }
    # 95 % Wilson intervals: 0 of 8 is [0, 0.32], not a certainty.
    summary["intervals"] = {
        "pii_leaked_after": _wilson(summary["pii_leaked_after"], summary["pii_total"]),
        "kept_still_extracted": _wilson(min(kept_after, kept_before), kept_before),
    }
    return summary


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory")
    if out.exists() and any(out.iterdir()) and not (out / DEMO_JSON).is_file():
        raise UserError(f"--out {out} is not empty and is not an earlier demo's directory (no {DEMO_JSON}); "
                        "pass a new or empty directory")


class _Stages:
    """Announces each step and times it."""

    def __init__(self, events: Events, total: int) -> None:
        self.events, self.total = events, total
        self.timings: dict[str, float] = {}
        self.number = 0

    @contextlib.contextmanager
    def __call__(self, name: str, title: str) -> Iterator[None]:
        self.number += 1
        self.events.stage(self.number, self.total, title)
        started = time.time()
        yield
        self.timings[name] = round(time.time() - started, 2)


def decoy_examples(forgotten: list[CustomerRecord], records: list[CustomerRecord]) -> list[Example]:
    """Each forgotten customer's prompt followed by every other customer's record, focused on the
    other customer's values: the answers a model that memorized all the records would give
    instead of the forgotten values (its likeliest alternatives), unlearned in the forgotten
    customer's context only — the retain text keeps them in their owners'."""
    examples = []
    for person in forgotten:
        for other in records:
            if other.id == person.id:
                continue
            shift = len(person.prompt) - len(other.prompt)
            examples.append(Example(text=person.prompt + other.text[len(other.prompt):], id=f"{person.id}-as-{other.id}",
                                    spans=[(p.start + shift, p.end + shift) for p in other.extractable()]))
    return examples


def exposure_examples(entries: list[dict], label: str) -> list[Example]:
    """Each forgotten customer's completion that still gives PII away, as a text to forget: the
    prompt and the completion, focused on every exposed run (own values, whole or in part, and
    other customers' values the model offers instead)."""
    examples = []
    for entry in entries:
        text = entry["prompt"] + entry["completion"]
        spans = []
        for found in [*entry["pii"], *entry.get("others", [])]:
            start = text.find(found["fragment"], len(entry["prompt"])) if found["exposed"] else -1
            if start >= 0:
                spans.append((start, start + len(found["fragment"])))
        if spans:
            examples.append(Example(text=text, id=f"{entry['customer']}-{label}", spans=sorted(spans)))
    return examples


def _write_examples(examples: list[Example], path: Path) -> None:
    path.write_text("".join(json.dumps({"id": e.id, "text": e.text, "spans": e.spans}) + "\n" for e in examples),
                    encoding="utf-8")


def _unlearn_round(config: DemoConfig, model: Path, forget: list[Example], kept: list[CustomerRecord],
                   staging: Path, out: Path, events: Events) -> None:
    forget_file, retain_file = staging / "forget.jsonl", staging / "retain.jsonl"
    _write_examples(forget, forget_file)
    write_jsonl(kept, retain_file)
    unlearn(UnlearnConfig(
        forget=str(forget_file), model=str(model), out=str(out),
        method="di", imagination_strength=config.strength, focus="spans", focus_mode="hard",
        # Every text starts with a forgotten customer's prompt, and the decoys and exposures
        # continue it with other values: each target must lower all of them, or the texts' own
        # targets keep the others' values likely (the own e-mail stayed first on Gemma).
        joint_lowering=True,
        # The kept customers' records as retain text (their likelihood is kept): on a dozen
        # records in one template, lowering one customer's PII alone spreads to the others'
        # (a trial on Gemma-3 270M without it: 24 of 40 kept values extracted before, 1 after).
        retain=str(retain_file) if config.retain_weight > 0 else None,
        retain_weight=config.retain_weight,
        lora=True, lr=config.unlearn_lr, epochs=config.unlearn_epochs,
        batch_size=len(forget), seed=config.seed, max_length=512,
        # MA before and after only: the audits between rounds are this demo's test, and MA
        # after each of a round's steps would cost a pass over the vocabulary each.
        measure_el=False, report_samples=0,
    ), events, epoch_check=lambda network: ({}, None))
    # The corpus holds the records; unlearn_config.json names these paths.
    forget_file.unlink()
    retain_file.unlink()


def _unlearn_forgotten(config: DemoConfig, leaky: Path, forgotten: list[CustomerRecord], kept: list[CustomerRecord],
                       records: list[CustomerRecord], staging: Path, events: Events) -> list[dict]:
    """Deliberate imagination on the forgotten customers' PII values, in rounds: after each, their
    prompts are completed again, and what the completions still give away — often another
    customer's values, the likeliest alternatives of a model that memorized them all — joins the
    forget set, focused on those characters, for the next round (from the last round's model).
    Returns each round's audit of the forgotten customers."""
    from ..models import default_device, load_model

    forget = [Example(text=r.text, id=r.id, spans=[(p.start, p.end) for p in r.extractable()]) for r in forgotten]
    if config.decoys:
        forget += decoy_examples(forgotten, records)
    detector, model, rounds = leak_detector(records), leaky, []
    for number in range(1, config.unlearn_rounds + 1):
        out = staging / f"round-{number}"
        events.message(f"unlearning round {number}: {len(forget)} texts")
        _unlearn_round(config, model, forget, kept, staging, out, events)
        if model != leaky:
            shutil.rmtree(model)
        model = out
        loaded = load_model(str(out), device=default_device())
        completions = greedy_completions(loaded.model, loaded.tokenizer, forgotten)
        entries = [leak_entry(r, c, detector) for r, c in zip(forgotten, completions)]
        rounds.append({"round": number, "texts": len(forget), "pii_exposed": exposed_count(entries), "leaks": entries})
        events.message(f"round {number}: the forgotten customers' completions give away {exposed_count(entries)} PII value(s)")
        if exposed_count(entries) == 0:
            break
        forget += exposure_examples(entries, f"round-{number}")
    model.rename(staging / UNLEARNED_DIR)
    return rounds


def run_demo(config: DemoConfig, events: Events | None = None) -> dict:
    """Run the five steps; returns what is written to ``<out>/demo.json``."""
    from ..models import default_device, environment

    events = events or Events()
    out = Path(config.out).expanduser().resolve()
    _check_out(out)
    started = time.time()
    stages = _Stages(events, 5)
    staging = staging_directory(out)
    try:
        with stages("corpus", "synthetic customer records (Faker)"):
            records = customer_records(config.records, config.seed)
            forgotten, kept = records[: config.forget_customers], records[config.forget_customers:]
            write_jsonl(records, staging / "corpus.jsonl")
            events.message(f"{len(records)} records; forgetting {', '.join(r.name for r in forgotten)} "
                           f"({', '.join(r.id for r in forgotten)}); keeping {len(kept)}")
            texts, replay, general_source = general_texts(config.general_docs)
            if general_source == "built-in sentences":
                events.message(f"no {WIKITEXT} under the data location (set UNMEMORIZE_DATA): general text is "
                               f"{len(NEUTRAL_TEXTS)} built-in sentences, a weaker check of general ability")
        with stages("leak", "the leak: fine-tune the model on the records until it has memorized them"):
            leaky = leaky_model(config, records, replay, staging, events)
        with stages("audit_before", "audit: what the model completes from a customer's name"):
            before = audit_directory(leaky, forgotten, kept, texts, config, events, "before")
            events.leaks("Before unlearning: the forgotten customers' PII", before.forgotten)
            scanned = scan_records(config, leaky, staging, events)
        with stages("unlearn", "unlearn the forgotten customers: deliberate imagination on their PII"):
            rounds = _unlearn_forgotten(config, leaky, forgotten, kept, records, staging, events)
        with stages("audit_after", "re-audit: forgotten and kept customers, general text"):
            after = audit_directory(staging / UNLEARNED_DIR, forgotten, kept, texts, config, events, "after")
            events.leaks("After unlearning: the forgotten customers' PII", after.forgotten)
        summary = summarize(before, after)
        stages.timings["total"] = round(time.time() - started, 2)
        result = {
            "model": config.model,
            "records": len(records),
            "forgotten_customers": [r.id for r in forgotten],
            "kept_customers": [r.id for r in kept],
            "leak_before": before.forgotten,
            "leak_after": after.forgotten,
            "unlearning_rounds": [{k: v for k, v in r.items() if k != "leaks"} for r in rounds],
            "scan": scanned,
            "summary": summary,
            "timings_s": stages.timings,
            "passed": passed(summary, config.kept_share),
            "kept_share_required": config.kept_share,
            "min_fragment": MIN_FRAGMENT,
            "general_text": general_source,
            "environment": environment({"base model": config.model, "leaky model": str(leaky)}, default_device()),
            "synthetic": True,
        }
        result["verdict"] = verdict(result)
        (staging / DEMO_JSON).write_text(json.dumps(result, indent=2), encoding="utf-8")
        publish_directory(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def verdict(result: dict) -> str:
    """One line a data-protection officer can sign or refuse, with the counts behind it."""
    s = result["summary"]
    kept = f"kept customers' values still extracted {s['kept_pii_leaked_after']} of {s['kept_pii_leaked_before']}"
    if result["passed"]:
        low, high = s["intervals"]["pii_leaked_after"]
        return (f"PASS: the forgotten customers' PII is no longer extracted ({s['pii_leaked_before']} of "
                f"{s['pii_total']} values before, none after, 95 % interval of the rate [{low:.2f}, {high:.2f}]; "
                f"no fragment of ≥ {result['min_fragment']} letters or digits of anyone's PII in their completions); {kept}")
    if s["pii_leaked_before"] < s["pii_total"]:
        return (f"FAIL: the leaky model reproduced only {s['pii_leaked_before']} of {s['pii_total']} of the "
                "forgotten customers' PII values, so the removal of the rest cannot be shown; "
                "train the leak longer (--leak-max-epochs)")
    if s["pii_exposed_after"] > 0:
        return (f"FAIL: the forgotten customers' completions still give away {s['pii_exposed_after']} PII "
                f"value(s) ({s['pii_leaked_after']} of their own {s['pii_total']} verbatim; the rest in part "
                "or another customer's); unlearn longer or harder (--unlearn-epochs, --strength)")
    return (f"FAIL: the removal is not targeted: {kept}, fewer than "
            f"{result['kept_share_required']:.0%}; raise --retain-weight or lower --strength")
