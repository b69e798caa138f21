"""The memory planner against the peak memory of real runs: a few steps of `unlearn` with DI on
Gemma-3 270M (full fine-tuning and LoRA) on this machine's CPU, each in its own process.

    UNMEMORIZE_DATA=../shared/data python benchmarks/plan_memory.py [--out benchmarks/results/plan]

Measured: the peak resident set size of the process (ru_maxrss: every tensor on a CPU is in
it; tracemalloc sees only Python's own allocations, not PyTorch's, so it is not used) and, in a
separate process, the resident size before any model is loaded (imports and tokenizer: the
planner's "runtime" term on a CPU). Planned: `unmemorize plan --device cpu` for the same
setting. Writes plan_memory.json and plan_memory.md with a description of the machine."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = [  # name, LoRA, batch size, max length
    ("di-full-b4-l128", False, 4, 128),
    ("di-lora-b4-l128", True, 4, 128),
    ("di-lora-b8-l200", True, 8, 200),
]
FORGET = "extraction/forget_sets/lm_extraction_8_0.csv"

RUN_SCRIPT = """
import json, resource, sys, time
from unmemorize.config import UnlearnConfig
from unmemorize.recipes.unlearn import unlearn
lora, batch, length, forget = json.loads(sys.argv[1])
started = time.time()
metrics = unlearn(UnlearnConfig(model="gemma-3-270m", forget=forget, method="di", imagination_strength=10.0,
                                lora=lora, batch_size=batch, max_length=length, max_steps=3, measure_el=False,
                                report_samples=0, cpu=True, threads=1))
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "wall_s": round(time.time() - started, 1), "steps": len(metrics["steps"])}))
"""

BASELINE_SCRIPT = """
import json, resource
import torch, transformers, peft, accelerate
import unmemorize.recipes.unlearn
from unmemorize.models import load_tokenizer
load_tokenizer("gemma-3-270m")
print(json.dumps({"rss_before_model": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def machine() -> dict:
    import torch

    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "0")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(int(memory) / 2**20, 1),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def _child(script: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def planned(lora: bool, batch: int, length: int) -> dict:
    from unmemorize.config import PlanConfig
    from unmemorize.recipes.plan import run_plan

    plan = run_plan(PlanConfig(model="gemma-3-270m", method="di", lora=lora, batch_size=batch, max_length=length,
                               device="cpu"))
    return plan["asked"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "plan"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from unmemorize.paths import data_path

    forget = data_path(FORGET)
    if forget is None:
        raise SystemExit(f"{FORGET} not found: set UNMEMORIZE_DATA to the shared data folder")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    baseline = _child(BASELINE_SCRIPT)
    rows = []
    for name, lora, batch, length in RUNS:
        started = time.time()
        measured = _child(RUN_SCRIPT, json.dumps([lora, batch, length, str(forget)]))
        plan = planned(lora, batch, length)
        rows.append({"name": name, "lora": lora, "batch_size": batch, "max_length": length, **measured,
                     "planned_total": plan["total"], "planned_terms": plan["terms"],
                     "planned_over_measured": round(plan["total"] / measured["peak_rss"], 3),
                     "process_wall_s": round(time.time() - started, 1)})
        print(f"{name}: planned {plan['total'] / 2**30:.2f} GiB, measured {measured['peak_rss'] / 2**30:.2f} GiB",
              flush=True)
    result = {"machine": machine(), "model": "gemma-3-270m", "forget": f"${{UNMEMORIZE_DATA}}/{FORGET}",
              **baseline, "runs": rows, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (out / "plan_memory.json").write_text(json.dumps(result, indent=2))
    lines = ["| run | planned | measured peak RSS | planned / measured |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['planned_total'] / 2**30:.2f} GiB | {r['peak_rss'] / 2**30:.2f} GiB | "
              f"{r['planned_over_measured']:.3f} |" for r in rows]
    described = ", ".join(f"{k} {v}" for k, v in result["machine"].items())
    (out / "plan_memory.md").write_text(
        f"# Planned vs measured memory, Gemma-3 270M, DI, 3 steps on a CPU\n\n{described}\n\n"
        f"Resident before any model is loaded: {baseline['rss_before_model'] / 2**30:.2f} GiB.\n\n"
        + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
