"""`unmemorize scan`: which windows of a corpus the model reproduces, written as a forget set.

The corpus is read as a stream and cut into shards of ``--shard-documents`` documents; a shard's
windows are scored in one teacher-forced pass (`metrics.scan.window_scores`) and its result is
written as one file under ``OUT/.scan-shards``. A killed scan resumes from the shards on disk;
under ``torchrun``/``accelerate launch`` process r takes the shards k with k mod N = r. The merge
reads the shards in order, so every number of processes writes the same files.

First the reference (unseen text: the first window of each of ``--reference-limit`` documents)
is scored the same way and fixes the flag threshold at ``--fpr`` and the attack's candidate
threshold at ``--attack-fpr`` (`metrics.scan.reference_threshold`)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch

from ..config import DEFAULT_REFERENCE, ScanConfig, as_json
from ..data import Example, Window, document_windows, iter_examples, leading_specials
from ..errors import UserError
from ..events import Events
from ..focus import load_spacy, pii_spans, tokens_in_focus
from ..metrics.scan import extraction_attack, reference_threshold, window_scores
from ..models import LoadedModel, load_model
from ..paths import atomic_file, data_path, portable, write_atomic, write_json

SHARDS_DIR = ".scan-shards"
FORGET_FILE, SCAN_FILE, SUMMARY_FILE = "forget.jsonl", "scan.jsonl", "scan.json"
# Options that leave every shard's content unchanged: they may differ on --resume.
RESUME_MAY_CHANGE = frozenset({"resume", "overwrite", "threads", "cpu"})
TOP_WINDOWS = 20  # rows of the report's ranked table


def corpus_files(patterns: tuple[str, ...]) -> list[str]:
    """The corpus sources, globs expanded (sorted); a pattern matching nothing is an error."""
    files = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if pattern.startswith("hf:"):
            files.append(pattern)
        elif glob.has_magic(expanded):
            matched = sorted(glob.glob(expanded))
            if not matched:
                raise UserError(f"--corpus {pattern}: no file matches")
            files += matched
        elif not Path(expanded).exists():
            raise UserError(f"corpus file not found: {expanded}")
        else:
            files.append(expanded)
    return files


def reference_source(config: ScanConfig) -> str:
    path = config.reference or data_path(DEFAULT_REFERENCE)
    if path is None:
        raise UserError(f"scan needs unseen reference text: pass --reference FILE (default {DEFAULT_REFERENCE} "
                        "under UNMEMORIZE_DATA or ../shared/data was not found), or --threshold")
    return str(path)


def _documents(files: list[str], config: ScanConfig) -> Iterator[tuple[int, Example]]:
    stream = ((number, example) for number, source in enumerate(files)
              for example in iter_examples(source, split=config.split, text_column=config.text_column,
                                           npy_tokenizer=config.npy_tokenizer))
    return islice(stream, config.limit)


def _fingerprint(config: ScanConfig, files: list[str]) -> dict:
    """What a shard's content depends on: the options and each file's size and time."""
    options = {k: v for k, v in as_json(config).items() if k not in RESUME_MAY_CHANGE}
    stats = [[f] if f.startswith("hf:") else [f, os.stat(f).st_size, int(os.stat(f).st_mtime)] for f in files]
    return json.loads(json.dumps({"options": options, "files": stats}))


def _check_out(config: ScanConfig, fingerprint: dict) -> Path:
    """The output directory, checked before anything is written (every process checks)."""
    out = Path(config.out).expanduser()
    shards = out / SHARDS_DIR
    if config.resume:
        recorded = shards / "fingerprint.json"
        if not recorded.is_file():
            raise UserError(f"--resume: no unfinished scan in {out}")
        before = json.loads(recorded.read_text(encoding="utf-8"))
        if before != fingerprint:
            changed = sorted(k for k in set(before["options"]) | set(fingerprint["options"])
                             if before["options"].get(k) != fingerprint["options"].get(k))
            what = ", ".join("--" + k.replace("_", "-") for k in changed) or "the corpus files"
            raise UserError(f"--resume: {what} differ from the scan in {out}; rerun without --resume (and --overwrite)")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())) and not config.overwrite:
        raise UserError(f"--out {out} is not empty: pass --overwrite to replace it, or --resume to continue its scan")
    return out


@dataclass
class _Scan:
    config: ScanConfig
    loaded: LoadedModel
    specials: list[int]
    shards: Path
    process: int
    processes: int
    events: Events
    flag: dict | None = None  # the flag threshold (reference_threshold's dict)
    candidate: dict | None = None  # the extraction attack's candidate threshold
    nlp: object = None

    def scores(self, windows: list[Window]) -> list[dict]:
        config, tokenizer = self.config, self.loaded.tokenizer
        return window_scores(self.loaded.model, [w.input_ids for w in windows], [w.text for w in windows],
                             k_percent=config.mia_k_percent, batch_size=config.batch_size,
                             pad_token_id=tokenizer.pad_token_id)

    def run_shards(self, kind: str, documents: Iterator, total: int, work) -> None:
        """``work(group) -> dict`` on this process's shards of ``documents`` not yet on disk."""
        progress = self.events.progress(f"{kind} documents")
        done = scored_windows = scored_documents = 0
        started = time.perf_counter()
        size = self.config.shard_documents
        shards = (total + size - 1) // size
        for number in range(shards):
            group = list(islice(documents, size))
            path = self.shards / f"{kind}-{number:06d}.json"
            done += len(group)
            if number % self.processes == self.process and not path.exists():
                begun = time.perf_counter()
                result = work(group)
                result["seconds"] = time.perf_counter() - begun
                write_atomic(path, json.dumps(result))
                scored_windows, scored_documents = scored_windows + len(result["windows"]), scored_documents + len(group)
                elapsed = time.perf_counter() - started
                tokens = sum(w["tokens"] for w in result["windows"])
                # This process's share of what is left, at its pace since it started.
                eta = (total - done) / self.processes * elapsed / scored_documents
                self.events.message(
                    f"{kind} shard {number + 1}/{shards}: {len(result['windows'])} windows, "
                    f"{len(result['windows']) / result['seconds']:.2f} windows/s, {tokens / result['seconds']:.0f} tokens/s; "
                    f"{scored_windows / elapsed:.2f} windows/s since start, about {eta / 60:.0f} min left")
            progress(done, total)


def run_scan(config: ScanConfig, events: Events | None = None) -> dict:
    """Scan ``config.corpus`` (see the module doc); returns the summary written to scan.json."""
    from accelerate import Accelerator

    events = events or Events()
    started = time.perf_counter()
    files = corpus_files(config.corpus)
    reference = None if config.threshold is not None else reference_source(config)
    fingerprint = _fingerprint(config, files)
    out = _check_out(config, fingerprint)
    # A full read checks every record before anything is written, and counts them for the ETA.
    total = sum(1 for _ in _documents(files, config))
    if total == 0:
        raise UserError(f"no documents in the corpus ({', '.join(config.corpus)})")
    references = list(islice(iter_examples(reference, split=config.split, text_column=config.text_column,
                                           npy_tokenizer=config.npy_tokenizer), config.reference_limit)) \
        if reference else []
    # Without a GPU, accelerate joins the processes of torchrun only when told it runs on the CPU
    # (and a single process keeps the default: its accelerator state is shared with later work).
    parallel = int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(cpu=config.cpu or (parallel and not torch.cuda.is_available()))
    loaded = load_model(config.model, device=str(accelerator.device), allow_pickle=config.allow_pickle,
                        trust_remote_code=config.trust_remote_code, progress=events.message)
    shards = out / SHARDS_DIR
    if accelerator.is_main_process and not config.resume:
        if out.exists() and config.overwrite:
            shutil.rmtree(out)
        write_atomic(shards / "fingerprint.json", json.dumps(fingerprint))
    accelerator.wait_for_everyone()
    if config.resume:
        finished = len(list(shards.glob("corpus-*.json")))
        events.message(f"resuming: {finished} corpus shard(s) already finished")
    scan = _Scan(config, loaded, leading_specials(loaded.tokenizer), shards, accelerator.process_index,
                 accelerator.num_processes, events)
    _calibrate(scan, references, accelerator)
    scan.run_shards("corpus", _documents(files, config), total, lambda group: _corpus_shard(scan, group))
    accelerator.wait_for_everyone()
    summary = None
    if accelerator.is_main_process:
        summary = _merge(scan, files, out, total, time.perf_counter() - started)
        shutil.rmtree(shards)
    accelerator.wait_for_everyone()
    return summary


def _calibrate(scan: _Scan, references: list[Example], accelerator) -> None:
    """The flag and candidate thresholds: from the reference's scores, or --threshold."""
    config = scan.config
    if config.threshold is not None:
        scan.flag = scan.candidate = {"threshold": config.threshold, "explicit": True}
        return

    def first_windows(group: list[Example]) -> dict:
        windows = [w[0] for w in (document_windows(e, scan.loaded.tokenizer, config.window, config.stride,
                                                   scan.specials) for e in group) if w]
        return {"windows": [{"tokens": len(w.input_ids), **s} for w, s in zip(windows, scan.scores(windows))]}

    scan.run_shards("reference", iter(references), len(references), first_windows)
    accelerator.wait_for_everyone()
    values = [w[config.score] for w in _shard_windows(scan.shards, "reference")]
    scan.flag = reference_threshold(values, config.fpr)
    scan.candidate = reference_threshold(values, config.attack_fpr)
    if not scan.flag["resolvable"]:
        scan.events.message(f"{len(values)} reference windows cannot resolve --fpr {config.fpr:g}: "
                            "flagging only what lies above every reference window")


def _shard_windows(shards: Path, kind: str) -> Iterator[dict]:
    for path in sorted(shards.glob(f"{kind}-*.json")):
        yield from json.loads(path.read_text(encoding="utf-8"))["windows"]


def _corpus_shard(scan: _Scan, group: list[tuple[int, Example]]) -> dict:
    """Every window of a shard's documents: its scores, the attack on the candidates, the flag
    and, for flagged windows with --pii, the PII spans in them."""
    config, tokenizer = scan.config, scan.loaded.tokenizer
    pieces = [(source, w) for source, example in group
              for w in document_windows(example, tokenizer, config.window, config.stride, scan.specials)]
    windows = [w for _, w in pieces]
    scores = scan.scores(windows) if windows else []
    candidates = [i for i, s in enumerate(scores) if s[config.score] > scan.candidate["threshold"]]
    attacks, predictions = extraction_attack(
        scan.loaded.model, [windows[i].input_ids for i in candidates], prefix_tokens=config.extraction_prefix,
        suffix_tokens=config.extraction_suffix, text_start=len(scan.specials), batch_size=config.batch_size,
        pad_token_id=tokenizer.pad_token_id) if candidates else ([], [])
    attacked = dict(zip(candidates, zip(attacks, predictions)))
    records = []
    for i, ((source, window), score) in enumerate(zip(pieces, scores)):
        attack = attacked.get(i, (None, None))[0]
        flagged = score[config.score] > scan.flag["threshold"] or bool(attack and attack["exact"])
        record = {"id": window.id, "document": window.document, "source": source, "window": window.index,
                  "char_start": window.char_start, "char_end": window.char_end, "tokens": len(window.input_ids),
                  **score, "candidate": i in attacked, "extraction": attack, "flagged": flagged}
        if flagged or config.show_text:
            record["text"] = window.text
        records.append(record)
    flagged = [i for i, r in enumerate(records) if r["flagged"]]
    if config.pii and flagged:
        scan.nlp = scan.nlp or load_spacy()
        found = pii_spans([windows[i].text for i in flagged], scan.nlp)
        for i, spans in zip(flagged, found):
            records[i]["pii"] = [_pii_entry(span, windows[i], attacked[i][1]) for span in spans]
    return {"windows": records}


def _pii_entry(span, window: Window, predicted: list[int]) -> dict:
    """A PII span of a window; ``reproduced`` when the model's greedy prediction from the
    window's text before it is the true token at every token of the span."""
    inside = tokens_in_focus(window.offsets, [(span.start, span.end)])
    hits = [predicted[t - 1] == window.input_ids[t] for t in range(1, len(window.input_ids)) if inside[t]]
    return {"start": span.start, "end": span.end, "kind": span.kind, "reproduced": bool(hits) and all(hits)}


def _merge(scan: _Scan, files: list[str], out: Path, documents: int, seconds: float) -> dict:
    """scan.jsonl, forget.jsonl and scan.json from the shards, in corpus order; then the report."""
    config = scan.config
    sources = [portable(f) for f in files]
    counts = {"windows": 0, "tokens": 0, "flagged": 0, "candidates": 0, "extracted": 0, "shard_seconds": 0.0}
    pii: dict[str, dict[str, int]] = {}
    top: list[dict] = []
    with atomic_file(out / SCAN_FILE) as scan_file, atomic_file(out / FORGET_FILE) as forget_file:
        for record in _shard_windows(scan.shards, "corpus"):
            counts["windows"] += 1
            counts["tokens"] += record["tokens"]
            counts["candidates"] += record["candidate"]
            counts["extracted"] += bool(record["extraction"] and record["extraction"]["exact"])
            if record["flagged"]:
                counts["flagged"] += 1
                forget_file.write((json.dumps(_forget_record(record, sources)) + "\n").encode("utf-8"))
                for span in record.get("pii", []):
                    entry = pii.setdefault(span["kind"], {"found": 0, "reproduced": 0})
                    entry["found"] += 1
                    entry["reproduced"] += span["reproduced"]
                top = sorted([*top, _ranked(record, config.show_text)], key=lambda r: -r[config.score])[:TOP_WINDOWS]
            if not config.show_text:
                record.pop("text", None)
            scan_file.write((json.dumps({**record, "source": sources[record["source"]]}) + "\n").encode("utf-8"))
    counts["shard_seconds"] = sum(json.loads(p.read_text(encoding="utf-8"))["seconds"]
                                  for p in sorted(scan.shards.glob("*-*.json")))
    reference = [w["tokens"] for w in _shard_windows(scan.shards, "reference")]
    # Throughput counts every window scored, the reference's too, over the command's wall time.
    scored_windows, scored_tokens = counts["windows"] + len(reference), counts["tokens"] + sum(reference)
    summary = {
        "model": config.model, "config": as_json(config), "corpus": sources, "documents": documents,
        **{k: v for k, v in counts.items() if k != "shard_seconds"},
        "score": config.score, "threshold": scan.flag, "candidate_threshold": scan.candidate,
        "pii": pii if config.pii else None, "top": top,
        "histogram": _histogram(scan),
        "reference_windows": len(reference),
        "timing": {"wall_s": seconds, "scoring_s": counts["shard_seconds"], "processes": scan.processes,
                   "windows_per_s": scored_windows / seconds, "tokens_per_s": scored_tokens / seconds},
    }
    write_json(out / SUMMARY_FILE, summary)
    return summary


def _forget_record(record: dict, sources: list[str]) -> dict:
    """A flagged window as `unlearn --forget` reads it: id, text, spans (PII, with --pii)."""
    return {"id": record["id"], "text": record["text"], "document": record["document"],
            "source": sources[record["source"]], "char_start": record["char_start"], "char_end": record["char_end"],
            "spans": [{"start": s["start"], "end": s["end"], "kind": s["kind"], "reproduced": s["reproduced"]}
                      for s in record.get("pii", [])]}


def _ranked(record: dict, show_text: bool) -> dict:
    keep = {k: v for k, v in record.items() if k not in ("text", "pii", "source", "candidate", "flagged")}
    keep["pii"] = sorted({s["kind"] for s in record.get("pii", [])})
    keep["chars"] = record["char_end"] - record["char_start"]
    if show_text:
        keep["text"] = record["text"]
    return keep


HISTOGRAM_BINS = 30


def _histogram(scan: _Scan) -> dict:
    """Counts of the flag score in equal bins over the range of corpus and reference together
    (two passes over the shards: no list of every window's score is held)."""
    name = scan.config.score

    def scores(kind: str) -> Iterator[float]:
        return (w[name] for w in _shard_windows(scan.shards, kind))

    if next(scores("corpus"), None) is None:
        return None

    low = min(min(scores("corpus")), min(scores("reference"), default=float("inf")))
    high = max(max(scores("corpus")), max(scores("reference"), default=float("-inf")))
    width = (high - low) / HISTOGRAM_BINS or 1.0

    def counts(kind: str) -> list[int]:
        bins = [0] * HISTOGRAM_BINS
        for value in scores(kind):
            bins[min(int((value - low) / width), HISTOGRAM_BINS - 1)] += 1
        return bins

    return {"score": name, "edges": [low + i * width for i in range(HISTOGRAM_BINS + 1)],
            "corpus": counts("corpus"), "reference": counts("reference")}
