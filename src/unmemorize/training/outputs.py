"""Where a run writes, and writing it: the checks that keep a run from touching its inputs, and
the output directory, written under a temporary name and renamed when complete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..config import UnlearnConfig, as_json
from ..errors import UserError
from ..paths import portable, publish_directory, staging_directory


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def _input_paths(config: UnlearnConfig) -> dict[str, Path]:
    inputs = {}
    for label, given in (("the input model", config.model), ("the forget data", config.forget),
                         ("the retain data", config.retain)):
        if given is None:
            continue
        path = Path(given).expanduser()
        if not str(given).startswith("hf:") and path.exists():
            inputs[label] = path.resolve()
    return inputs


def output_paths(config: UnlearnConfig) -> tuple[Path | None, Path | None]:
    """Where the output and the checkpoints go. Refuses any place whose writing or replacing
    (--overwrite) would touch the input model or the forget data."""
    inputs = _input_paths(config)
    out = checkpoints = None
    if config.out is not None:
        out = Path(config.out).expanduser().resolve()
        for label, path in inputs.items():
            if _inside(out, path):
                raise UserError(f"--out {out} is {label} or inside its directory; inputs are never modified")
            if _inside(path, out):
                raise UserError(f"--out {out} contains {label}; writing the output there would replace it")
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; pass a directory")
        if out.exists() and any(out.iterdir()) and not config.overwrite:
            raise UserError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    if config.checkpoint_dir is not None:
        checkpoints = Path(config.checkpoint_dir).expanduser().resolve()
    elif out is not None:
        checkpoints = out.with_name(out.name + ".checkpoint")
    if checkpoints is not None:
        for label, path in inputs.items():
            if _inside(checkpoints, path):
                raise UserError(f"--checkpoint-dir {checkpoints} is {label} or inside its directory; inputs are never modified")
        if out is not None and (_inside(checkpoints, out) or _inside(out, checkpoints)):
            raise UserError(f"--checkpoint-dir {checkpoints} and --out {out} must be separate directories")
        if checkpoints.exists() and not checkpoints.is_dir():
            raise UserError(f"--checkpoint-dir {checkpoints} is a file; pass a directory")
    return out, checkpoints


def save_model_directory(out_dir: Path, model, tokenizer, config: UnlearnConfig, metrics: dict,
                         extra_files: dict[str, str] | None = None) -> None:
    """The model (LoRA merged), its tokenizer, ``unlearn_config.json``, ``metrics.json`` and
    ``extra_files`` (name -> text). A crash never leaves a directory that looks finished."""
    tmp = staging_directory(out_dir)
    try:
        if config.lora:
            if config.save_adapter:
                model.save_pretrained(tmp / "adapter")
            model = model.merge_and_unload()
        # GGUF-loaded weights are already dequantized floats; the marker only blocks saving.
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # Paths under the data location are written data-relative (portable across machines).
        (tmp / "unlearn_config.json").write_text(json.dumps(portable(as_json(config)), indent=2))
        (tmp / "metrics.json").write_text(json.dumps(portable(metrics), indent=2))
        for name, text in (extra_files or {}).items():  # e.g. dpd.json, read back by load_model
            (tmp / name).write_text(text)
        publish_directory(tmp, out_dir)  # --overwrite keeps one complete copy on disk
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
