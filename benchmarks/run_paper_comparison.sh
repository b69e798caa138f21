#!/usr/bin/env bash
# Runs a comparison file (default benchmarks/paper_comparison.yaml; the first argument picks
# another, e.g. benchmarks/paired_comparison.yaml) and records how: results in
# benchmarks/results/NAME/ (NAME: the file's name without .yaml: comparison.md/csv/json,
# tradeoff.png/csv, evals/*.json, command.txt, versions.txt); the runs' model weights (GBs) in
# the cache, outside the repository.
# Finished runs are skipped when the script is run again; a run whose settings changed is redone.
#
# Overrides (environment):
#   UNMEMORIZE_DATA          shared data folder (default: ../shared/data beside the repository)
#   UNMEMORIZE_BENCH_MODEL   model (default gemma-3-270m)
#   UNMEMORIZE_BENCH_FORGET  forget set (default the 32-sample set of Jang et al.)
#   BENCH_OUT                results folder (default benchmarks/results/NAME)
#   BENCH_RUNS_DIR           weights folder (default ${UNMEMORIZE_CACHE:-~/.cache/unmemorize}/benchmark-runs/NAME)
#   PYTHON                   interpreter with unmemorize installed (default .venv/bin/python)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if [[ -z "${UNMEMORIZE_DATA:-}" && -d ../shared/data ]]; then
    UNMEMORIZE_DATA="$(cd ../shared/data && pwd)"
fi
export UNMEMORIZE_DATA
python="${PYTHON:-.venv/bin/python}"
config="${1:-benchmarks/paper_comparison.yaml}"
name="$(basename "$config" .yaml)"
out="${BENCH_OUT:-benchmarks/results/$name}"
runs="${BENCH_RUNS_DIR:-${UNMEMORIZE_CACHE:-$HOME/.cache/unmemorize}/benchmark-runs/$name}"
mkdir -p "$out"

command=("$python" -m unmemorize.cli compare --config "$config" --out "$out" --runs-dir "$runs")
# The command as run from the repository root, with this machine's directories left out: the
# repository is ".", the data location its path relative to the repository, the home "~".
portable() {
    local value="$1" data_rel
    if [[ -n "${UNMEMORIZE_DATA:-}" ]]; then
        data_rel="$(realpath --relative-to="$repo" "$UNMEMORIZE_DATA")"
        value="${value//$UNMEMORIZE_DATA/$data_rel}"
    fi
    value="${value//$repo\//}"
    printf '%s' "${value//$HOME/\~}"
}
{
    for name in UNMEMORIZE_DATA UNMEMORIZE_BENCH_MODEL UNMEMORIZE_BENCH_FORGET; do
        if [[ -n "${!name:-}" ]]; then printf '%s=%q ' "$name" "$(portable "${!name}")"; fi
    done
    for part in "${command[@]}"; do printf '%q ' "$(portable "$part")"; done
    printf '\n'
} > "$out/command.txt"

# versions.txt keeps one block per invocation: rows finished in earlier invocations were measured
# with the versions (and the load) recorded there.
{
    echo "== invocation started $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    "$python" - <<'PY'
import platform, sys
from importlib.metadata import version
print(f"python {sys.version.split()[0]} ({platform.platform()})")
for package in ("torch", "transformers", "peft", "accelerate", "unmemorize"):
    print(f"{package} {version(package)}")
import torch
print(f"torch threads {torch.get_num_threads()}; cuda {torch.cuda.is_available()}")
PY
    echo "git commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$([[ -n "$(git status --porcelain -- . ":(exclude)$out" 2>/dev/null)" ]] && echo ' (with uncommitted changes)')"
} >> "$out/versions.txt"

start=$SECONDS
"${command[@]}"
# Wall time of this invocation; runs finished earlier are skipped, and each row's own training and
# evaluation time is in comparison.md (train s, eval s).
echo "finished $(date -u +%Y-%m-%dT%H:%M:%SZ); this invocation took $(( SECONDS - start )) s" >> "$out/versions.txt"
