"""Performance of unmemorize on the embedded model (Gemma-3 270M), each figure a ratio measured
side by side in one run against what a user would otherwise run:

1. the deliberate-imagination training step (LoRA and full, 8 × 200 tokens, γ = 10): ours against
   the public implementations' step (benchmarks/perf_step.py), tokens/s, peak memory of each
   process, and achieved GFLOP/s as a share of the matrix-product peak measured here;
2. greedy decoding at batch 32: ours against transformers' ``generate``;
3. exact EL_10 against per-prefix greedy ``generate`` (benchmarks/perf_decoding.py);
4. wall time of the commands a user runs: ``eval --quick``, the README's 32-sample unlearning
   command (to the unseen-text level, MA only), and the demo from an empty cache.

    python benchmarks/perf.py                      # everything (about an hour on 2 CPU cores)
    python benchmarks/perf.py --sections step      # step, decode, el, commands

Writes benchmarks/results/perf/results.json, results.md and machine.txt. Absolute times on a
shared machine vary with its load; the ratios are what the run measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = sys.executable
SECTIONS = ("step", "decode", "el", "commands")
sys.path.insert(0, str(HERE))
import perf_decoding  # noqa: E402  (a sibling script, not a package)


def machine() -> dict:
    """What ran the benchmark: CPU, cores, memory, versions, threads, load."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    memory = next((int(line.split()[1]) / 2**20 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), None) if Path("/proc/meminfo").exists() else None
    from importlib.metadata import version

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory, 1) if memory else None,
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "transformers": version("transformers"), "peft": version("peft"),
        "torch_threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg(),
        "git_commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def step_section(steps: int) -> list[dict]:
    rows = []
    for mode in ("lora", "full"):
        for impl in ("reference", "ours"):
            done = subprocess.run([PYTHON, str(HERE / "perf_step.py"), "--impl", impl, "--mode", mode,
                                   "--steps", str(steps)], capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                raise RuntimeError(f"perf_step {impl} {mode} failed: {done.stderr[-2000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def commands_section(data: Path) -> dict:
    """Wall times of `eval --quick`, the README's 32-sample unlearning command and the demo."""
    forget = data / "extraction/forget_sets/lm_extraction_32_0.csv"
    work = Path(tempfile.mkdtemp(prefix="unmemorize-perf-"))
    cli = [PYTHON, "-m", "unmemorize.cli"]
    commands = {
        "eval --quick (original model, 32-sample set)": cli + [
            "eval", "--model", "gemma-3-270m", "--forget", str(forget), "--quick", "--json", str(work / "eval.json")],
        "default memorization suite (original model, 32-sample set)": cli + [
            "eval", "--model", "gemma-3-270m", "--forget", str(forget), "--suites", "memorization",
            "--json", str(work / "memorization.json")],
        "unlearn, README's 32-sample DI-LoRA command, MA only": cli + [
            "unlearn", "--model", "gemma-3-270m", "--forget", str(forget), "--method", "di", "--strength", "10",
            "--lora", "--lr", "2e-3", "--batch-size", "4", "--epochs", "10", "--stop-ma", "auto", "--no-el",
            "--out", str(work / "di-32")],
        "demo from an empty cache": cli + ["demo", "--out", str(work / "demo")],
    }
    times = {}
    for label, command in commands.items():
        env = dict(os.environ)
        if label.startswith("demo"):
            env["UNMEMORIZE_CACHE"] = str(work / "empty-cache")  # dequantizes the model again
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
        times[label] = {"seconds": round(time.perf_counter() - started, 1), "exit_code": done.returncode}
        if label.startswith("unlearn"):
            metrics = json.loads((work / "di-32" / "metrics.json").read_text())
            times[label].update(steps=len(metrics["steps"]), stopped=metrics["stopped_because"],
                                forget_ma=metrics["after"]["mean"]["ma"])
        print(label, json.dumps(times[label]), flush=True)
    return times


def best_peak(results: dict) -> float:
    """The highest matrix-product peak measured during the run: on a shared machine a single
    measurement can be low, which would flatter every share of it."""
    decode = results.get("decode") or []
    measured = [results["matmul_peak_gflops"], results.get("matmul_peak_gflops_at_end", 0.0)]
    measured += [row["matmul_peak_gflops"] for row in (decode if isinstance(decode, list) else [decode])]
    return max(measured)


def markdown(results: dict) -> str:
    peak = best_peak(results)
    lines = ["# Performance on Gemma-3 270M", "", f"Machine: {results['machine']['cpu']}, "
             f"{results['machine']['cores']} cores, torch {results['machine']['torch']}, "
             f"{results['machine']['torch_threads']} threads; fp32 matrix-product peak {peak:.0f} GFLOP/s "
             f"(the best of the {results['matmul_peak_gflops']:.0f}-{peak:.0f} measured during the run; shares are of it). Load average at the start "
             f"{results['machine']['load_average_at_start'][0]:.2f}, at the end {results['load_average_at_end'][0]:.2f}.", ""]
    if results.get("step"):
        lines += ["## Deliberate-imagination step (8 × 200 tokens, γ = 10)", "",
                  "| mode | implementation | tokens/s | peak RSS (GB) | GFLOP/s | share of peak |",
                  "|---|---|---:|---:|---:|---:|"]
        for row in results["step"]:
            lines.append(f"| {row['mode']} | {row['impl']} | {row['tokens_per_s']:.1f} | {row['peak_rss_gb']:.1f} | "
                         f"{row['achieved_gflops']:.0f} | {row['achieved_gflops'] / peak:.0%} |")
        for mode in ("lora", "full"):
            ours = next(r for r in results["step"] if r["mode"] == mode and r["impl"] == "ours")
            ref = next(r for r in results["step"] if r["mode"] == mode and r["impl"] == "reference")
            lines.append(f"\n{mode}: {ours['tokens_per_s'] / ref['tokens_per_s']:.2f}× the reference's tokens/s at "
                         f"{ours['peak_rss_gb'] / ref['peak_rss_gb']:.2f}× its peak memory.")
        lines.append("")
    decode_rows = results.get("decode") or []
    if decode_rows:
        lines += ["## Greedy decoding (64-token prompts, 64 new tokens)", "",
                  "| batch | ours tokens/s | `generate` tokens/s | ratio | ours GFLOP/s | share of peak | same tokens |",
                  "|---:|---:|---:|---:|---:|---:|---|"]
        for row in decode_rows if isinstance(decode_rows, list) else [decode_rows]:
            lines.append(f"| {row['batch']} | {row['ours_tokens_per_s']:.1f} | {row['generate_tokens_per_s']:.1f} | "
                         f"{row['speedup_vs_generate']:.2f}× | {row['ours_gflops']:.0f} | "
                         f"{row['ours_gflops'] / peak:.0%} | {'yes' if row['identical_tokens'] else 'no'} |")
        lines.append("")
    if results.get("el"):
        el = results["el"]
        lines += [f"## Exact EL_{el['n']} ({el['samples']} samples × {el['tokens_per_sample'][0]} tokens, every prefix)", "",
                  "| ours (s) | per-prefix `generate` (s, extrapolated) | ratio | same continuations |", "|---:|---:|---:|---|",
                  f"| {el['ours_s']:.1f} | {el['generate_extrapolated_s']:.0f} | {el['speedup_vs_per_prefix_generate']:.1f}× | "
                  f"{'yes' if el['continuations_identical_on_measured'] else 'no'} |", "",
                  f"`generate` ran on {el['generate_measured_prefixes']} of the prefixes ({el['generate_measured_tokens']} "
                  f"tokens, {el['generate_measured_s']:.0f} s), extrapolated by tokens to all {el['naive_tokens_all_prefixes']}.", ""]
    if results.get("commands"):
        lines += ["## Commands", "", "| command | wall time (s) | notes |", "|---|---:|---|"]
        for label, row in results["commands"].items():
            notes = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in row.items() if k != "seconds")
            lines.append(f"| {label} | {row['seconds']:.0f} | {notes} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--steps", type=int, default=4, help="Steps per step variant (the first is a warm-up).")
    parser.add_argument("--decode-batches", type=lambda text: [int(b) for b in text.split(",")], default=[32, 128])
    parser.add_argument("--out", default=str(HERE / "results" / "perf"))
    parser.add_argument("--rewrite", action="store_true", help="Only rewrite results.md from OUT/results.json.")
    args = parser.parse_args()
    out = Path(args.out)
    if args.rewrite:
        (out / "results.md").write_text(markdown(json.loads((out / "results.json").read_text())))
        return
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    from unmemorize.paths import data_root

    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "matmul_peak_gflops": round(perf_decoding.matmul_peak_gflops(), 1)}
    print(json.dumps(results), flush=True)
    if "step" in sections:
        results["step"] = step_section(args.steps)
    if "decode" in sections or "el" in sections:
        from unmemorize.models import load_model

        loaded = load_model("gemma-3-270m")
        if "decode" in sections:
            results["decode"] = []
            for batch in args.decode_batches:
                results["decode"].append(perf_decoding.greedy_decoding(loaded.model, loaded.tokenizer, batch=batch))
                print(json.dumps(results["decode"][-1]), flush=True)
        if "el" in sections:
            results["el"] = perf_decoding.exact_el(
                loaded.model, loaded.tokenizer, perf_decoding.forget_sequences(loaded.tokenizer, 4, 96))
            print(json.dumps(results["el"]), flush=True)
    if "commands" in sections:
        results["commands"] = commands_section(data_root())
    results["load_average_at_end"] = os.getloadavg()
    results["matmul_peak_gflops_at_end"] = round(perf_decoding.matmul_peak_gflops(), 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    (out / "machine.txt").write_text("\n".join(f"{k}: {v}" for k, v in results["machine"].items()) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
