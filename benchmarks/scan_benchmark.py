"""Does `unmemorize scan` find what Gemma-3 270M memorized? A corpus of 2,032 documents mixes
the 32-sample extraction forget set (Jang et al. 2022; the set benchmarks/paired_comparison.yaml
forgets, MA 0.55 against 0.41 on unseen Pile text) into 2,000 documents of unseen text — unseen
Pile documents (reference/pile.csv after the ones the scan's reference uses: the two are
disjoint) and LAMBADA passages —, each document cut to its first 48 tokens so that it is one
window (BOS + 48) and the scan fits about an hour on one CPU core. The scan runs at its default
false-positive rate and flag score, its reference the first 300 documents of reference/pile.csv.

    OMP_NUM_THREADS=1 python benchmarks/scan_benchmark.py [--work DIR]

Writes benchmarks/results/scan/results.json and results.md: precision and recall of finding the
32 (Wilson 95 % intervals), the AUC of every score at telling them from the unseen documents
(percentile bootstrap 95 % intervals), the false-positive rate per source, throughput (windows/s,
tokens/s), wall time, peak memory and the machine. The corpus and the scan's output stay in
--work (outside the repository: they hold the data's text).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from perf import machine  # noqa: E402  (a sibling script, not a package)

from unmemorize.config import ScanConfig  # noqa: E402
from unmemorize.events import Events  # noqa: E402
from unmemorize.metrics.uncertainty import Measurement, bootstrap_interval, proportion_interval  # noqa: E402
from unmemorize.models import load_tokenizer  # noqa: E402
from unmemorize.paths import data_root, portable, write_atomic, write_json  # noqa: E402
from unmemorize.recipes.scan import run_scan  # noqa: E402

FORGET = "extraction/forget_sets/lm_extraction_32_0.csv"
SOURCES = (("pile", "reference/pile.csv", 1150), ("lambada", "reference/lambada.csv", 850))
REFERENCE = "reference/pile.csv"
REFERENCE_DOCUMENTS = 300
TEXT_TOKENS = 48
SCORES = ("loss", "min_k_plus_plus", "min_k", "zlib", "ma")


class Log(Events):
    def message(self, text: str) -> None:
        print(time.strftime("%H:%M:%S"), text, flush=True)

    def progress(self, label: str):
        def update(done: int, total: int) -> None:
            if done == total or done % 256 == 0:
                print(time.strftime("%H:%M:%S"), f"{label}: {done}/{total}", flush=True)
        return update


def rows(path: Path):
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as handle:
        yield from csv.DictReader(handle)


def first_tokens(text: str, tokenizer) -> str | None:
    """``text`` up to the end of its TEXT_TOKENS-th token; None when it has fewer."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(encoded["input_ids"]) < TEXT_TOKENS:
        return None
    return text[: encoded["offset_mapping"][TEXT_TOKENS - 1][1]]


def build_corpus(tokenizer, data: Path, path: Path) -> dict[str, str]:
    """The corpus file; returns each document id's source (forget, pile, lambada)."""
    documents = []
    for row in rows(data / FORGET):
        documents.append((f"forget-{row['doc_id']}", first_tokens(row["text"], tokenizer), "forget"))
    for name, relative, count in SOURCES:
        # The scan's reference is the first REFERENCE_DOCUMENTS of pile.csv: the corpus starts after.
        skip = REFERENCE_DOCUMENTS if relative == REFERENCE else 0
        taken = 0
        for index, row in enumerate(rows(data / relative)):
            text = first_tokens(row["text"], tokenizer) if index >= skip and taken < count else None
            if text:
                documents.append((f"{name}-{index}", text, name))
                taken += 1
        if taken < count:
            raise SystemExit(f"{relative}: only {taken} documents of {TEXT_TOKENS} tokens or more")
    assert all(text for _, text, _ in documents), "a forget sample is shorter than the window"
    write_atomic(path, "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t, _ in documents))
    return {ident: source for ident, _, source in documents}


def interval(measurement: Measurement) -> dict:
    low, high = bootstrap_interval(measurement)
    return {"value": measurement.value(), "low": low, "high": high}


def evaluate(scan_dir: Path, sources: dict[str, str], summary: dict) -> dict:
    """Precision and recall of the flags (a document is found when any of its windows is
    flagged), AUCs of each score (a document's highest window), false positives per source."""
    best: dict[str, dict] = {}
    with (scan_dir / "scan.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            window = json.loads(line)
            entry = best.setdefault(window["document"], {"flagged": False, "extracted": False,
                                                         **{s: -math.inf for s in SCORES}})
            entry["flagged"] |= window["flagged"]
            entry["extracted"] |= bool(window["extraction"] and window["extraction"]["exact"])
            for score in SCORES:
                entry[score] = max(entry[score], window[score])
    members = [d for d in best if sources[d] == "forget"]
    others = [d for d in best if sources[d] != "forget"]
    true_positive = sum(best[d]["flagged"] for d in members)
    flagged = sum(best[d]["flagged"] for d in best)
    result = {
        "documents": len(best), "members": len(members), "flagged": flagged, "true_positives": true_positive,
        "precision": {"value": true_positive / flagged if flagged else math.nan,
                      **dict(zip(("low", "high"), proportion_interval(true_positive, flagged)))} if flagged else None,
        "recall": {"value": true_positive / len(members),
                   **dict(zip(("low", "high"), proportion_interval(true_positive, len(members))))},
        "auc": {s: interval(Measurement("auc", {"member": [best[d][s] for d in members],
                                                "nonmember": [best[d][s] for d in others]})) for s in SCORES},
        "false_positive_rate": {},
    }
    for name in sorted({sources[d] for d in others}):
        ids = [d for d in others if sources[d] == name]
        hits = sum(best[d]["flagged"] for d in ids)
        result["false_positive_rate"][name] = {"flagged": hits, "documents": len(ids), "value": hits / len(ids),
                                               **dict(zip(("low", "high"), proportion_interval(hits, len(ids))))}
    result["extracted"] = {"members": sum(best[d]["extracted"] for d in members),
                           "others": sum(best[d]["extracted"] for d in others)}
    return result


def markdown(results: dict) -> str:
    m, e, t = results["machine"], results["evaluation"], results["scan"]["timing"]
    cell = lambda v: f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" if v else "–"  # noqa: E731
    lines = [
        "# Scan: finding Gemma-3 270M's memorized documents", "",
        f"Corpus: {e['documents']} documents of {TEXT_TOKENS} tokens ({e['members']} of the extraction forget set, "
        + ", ".join(f"{v['documents']} {k}" for k, v in e["false_positive_rate"].items())
        + f"); reference: the first {REFERENCE_DOCUMENTS} documents of {REFERENCE}; flag score "
        f"`{results['scan']['score']}` at FPR {results['scan']['threshold']['fpr']}.", "",
        "| | value [95 % interval] |", "|---|---|",
        f"| recall (forget documents flagged) | {cell(e['recall'])} ({e['true_positives']} of {e['members']}) |",
        f"| precision (flagged that are forget documents) | {cell(e['precision'])} ({e['true_positives']} of {e['flagged']}) |",
    ]
    lines += [f"| false-positive rate on {k} | {cell(v)} ({v['flagged']} of {v['documents']}) |"
              for k, v in e["false_positive_rate"].items()]
    lines += [f"| AUC of {s}{' (the flag score)' if s == results['scan']['score'] else ''} | {cell(v)} |"
              for s, v in e["auc"].items()]
    lines += ["", f"Throughput: {t['windows_per_s']:.2f} windows/s, {t['tokens_per_s']:.0f} tokens/s over the whole "
              f"command ({results['scan']['windows']} corpus windows and {results['scan']['threshold']['reference']} "
              f"reference windows); the extraction attack ({TEXT_TOKENS // 2}-token prefix and suffix) on "
              f"{results['scan']['candidates']} candidates reproduced {e['extracted']['members']} forget and "
              f"{e['extracted']['others']} unseen documents; wall time {t['wall_s']:.0f} s; peak memory {results['peak_memory_gib']:.2f} GiB.", "",
              f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread(s), torch {m['torch']}; "
              f"load average {m['load_average_at_start'][0]:.2f} at the start, {results['load_average_at_end'][0]:.2f} at the end "
              "(a machine shared with other jobs: absolute times vary with its load).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="Folder for the corpus and the scan's output (default: a new temporary one).")
    parser.add_argument("--out", default=str(HERE / "results" / "scan"))
    parser.add_argument("--model", default="gemma-3-270m")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = data_root()
    work = Path(args.work or tempfile.mkdtemp(prefix="scan-benchmark-"))
    started_machine = machine()
    tokenizer = load_tokenizer(args.model)
    sources = build_corpus(tokenizer, data, work / "corpus.jsonl")
    config = ScanConfig(model=args.model, corpus=(str(work / "corpus.jsonl"),), out=str(work / "scan"),
                        reference=str(data / REFERENCE), reference_limit=REFERENCE_DOCUMENTS,
                        window=TEXT_TOKENS + 1, extraction_prefix=TEXT_TOKENS // 2,
                        extraction_suffix=TEXT_TOKENS // 2, overwrite=True, threads=1)
    started = time.perf_counter()
    summary = run_scan(config, Log())
    wall = time.perf_counter() - started
    results = {
        "machine": started_machine, "load_average_at_end": list(__import__("os").getloadavg()),
        "command_wall_s": wall, "peak_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "corpus": {"documents": len(sources), "text_tokens": TEXT_TOKENS,
                   "sources": {name: sum(1 for s in sources.values() if s == name) for name in sorted(set(sources.values()))}},
        "scan": {k: summary[k] for k in ("documents", "windows", "tokens", "flagged", "candidates", "extracted",
                                          "reference_windows", "score", "threshold", "candidate_threshold", "timing")},
        "config": summary["config"],
        "evaluation": evaluate(work / "scan", sources, summary),
    }
    out = Path(args.out)
    write_json(out / "results.json", portable(results))
    write_atomic(out / "results.md", markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
