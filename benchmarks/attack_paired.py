"""The robustness attacks (`unmemorize attack`, the robustness suite) on the paired comparison's
unlearned models: the original is attacked once and every run is scored against it, as
`compare` does with a robustness column.

    python benchmarks/attack_paired.py [benchmarks/attack_paired.yaml]
    python benchmarks/attack_paired.py --resummarize   # recovery.md from the stored scores

Writes benchmarks/results/attack/: original.json and RUN.json (each `unmemorize eval`'s JSON),
recovery.md (each method's recovery under each attack, with the time each attack took),
machine.txt and command.txt."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))

from unmemorize.config import EvalConfig, from_mapping, read_yaml  # noqa: E402
from unmemorize.events import Events  # noqa: E402
from unmemorize.paths import portable, write_atomic, write_json  # noqa: E402
from unmemorize.recipes.evaluate import run_eval  # noqa: E402
from unmemorize.reporting.formatting import fmt  # noqa: E402


class Log(Events):
    """Messages with the time since the start, on stdout (the log of a background run)."""

    def __init__(self) -> None:
        self.started = time.time()

    def message(self, text: str) -> None:
        print(f"[{time.time() - self.started:7.1f} s] {text}", flush=True)


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    load = os.getloadavg()
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
            f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min) at {time.strftime('%H:%M:%S')}\n")


def summary(results: dict[str, dict], seconds: dict[str, float]) -> str:
    """recovery.md: per run, each attack setting's MA values and recovery, and the attack times."""
    lines = ["# Robustness of the paired comparison's unlearned models", "",
             "Recovery = (after attack − after unlearning) / (before − after unlearning), on forget-set MA; "
             "net: the attack's effect on the original (quantized or prompted the same way) taken out first. "
             "Extraction (50-token prefix, 50-token suffix) was 0 before unlearning already, so its recovery "
             "is undefined (n/a) unless an attack extracts something.", ""]
    for name, report in results.items():
        own = report["results"]["model"]["robustness"]
        lines += [f"## {name}", "", f"Evaluation wall time {seconds[name]:.0f} s; per attack: "
                  + ", ".join(f"{a} {s:.0f} s" for a, s in own["timings_s"].items()) + ".", "",
                  "| attack | setting | step | MA before | MA unlearned | MA attacked | MA original attacked "
                  "| recovery | net recovery | extracted |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in own["recovery"]:
            ma = row["values"]["ma"]
            net = (row["net_recovery"] or {}).get("ma")
            extracted = row["values"]["extractable"]["after_attack"]
            lines.append(f"| {row['attack']} | {row['variant']} | {fmt(row['step'])} | {fmt(ma['before'])} | "
                         f"{fmt(ma['after_unlearning'])} | {fmt(ma['after_attack'])} | {fmt(ma['original_attacked'])} | "
                         f"{fmt(row['recovery']['ma'])} | {fmt(net)} | {fmt(extracted)} |")
        lines += ["", "Strongest MA recovery per attack: " + ", ".join(
            f"{a} {fmt(v)}" for a, v in own["recovery_max"]["ma"].items()) + ".", ""]
    return "\n".join(lines) + "\n"


def resummarize(spec: dict, out: Path) -> None:
    """recovery.md again from the stored scores (no model is run): each run's recovery rows
    recomputed by the suite's `recovery_rows` from original.json and RUN.json."""
    import json

    from unmemorize.suites.robustness import recovery_rows, strongest

    baseline = json.loads((out / "original.json").read_text())["results"]["model"]["robustness"]
    results, seconds = {}, {}
    for name in spec["runs"]:
        path = out / f"{name}.json"
        if not path.is_file():
            continue
        results[name] = json.loads(path.read_text())
        own = results[name]["results"]["model"]["robustness"]
        own["recovery"] = recovery_rows(baseline, own)
        own["recovery_max"] = strongest(own["recovery"])
        seconds[name] = results[name]["wall_time_s"]
        write_json(path, results[name])
    write_atomic(out / "recovery.md", summary(results, seconds))


def main() -> None:
    arguments = [a for a in sys.argv[1:] if a != "--resummarize"]
    spec = read_yaml(arguments[0] if arguments else HERE / "attack_paired.yaml")
    out = Path(os.environ.get("BENCH_OUT", REPO / "benchmarks/results/attack"))
    out.mkdir(parents=True, exist_ok=True)
    if "--resummarize" in sys.argv:
        resummarize(spec, out)
        return
    options = from_mapping(EvalConfig, spec["options"], "options")
    runs_dir = Path(spec["runs_dir"]).expanduser()
    events = Log()
    write_atomic(out / "machine.txt", machine())
    write_atomic(out / "command.txt", "python " + " ".join(portable(a) for a in sys.argv) + "\n")
    results, seconds = {}, {}
    started = time.time()
    original = run_eval(EvalConfig(model=spec["model"], suites=("robustness",), **options), events)
    seconds["original"] = time.time() - started
    write_json(out / "original.json", original)
    baseline = original["results"]["model"]["robustness"]
    for name in spec["runs"]:
        started = time.time()
        events.message(f"{name}: attacks")
        results[name] = run_eval(EvalConfig(model=str(runs_dir / name), suites=("robustness",), **options),
                                 events, robustness=baseline)
        seconds[name] = time.time() - started
        write_json(out / f"{name}.json", results[name])
        write_atomic(out / "recovery.md", summary(results, seconds))
    with open(out / "machine.txt", "a") as handle:
        handle.write(f"original attacked in {seconds['original']:.0f} s; at the end: " + machine())


if __name__ == "__main__":
    main()
