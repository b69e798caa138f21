"""Where data and caches live."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import platformdirs

_REPO_ROOT = Path(__file__).resolve().parents[2]


def data_root() -> Path | None:
    """The shared data location: ``$UNMEMORIZE_DATA`` when set, else ``../shared/data``
    beside the repository (or beside the current directory) when it exists."""
    env = os.environ.get("UNMEMORIZE_DATA")
    if env:
        return Path(env).expanduser()
    for base in (_REPO_ROOT, Path.cwd()):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def data_path(relative: str) -> Path | None:
    """A file under the data location, or None when there is no data location or no such file."""
    root = data_root()
    if root is None:
        return None
    path = root / relative
    return path if path.exists() else None


DATA_VARIABLE = "${UNMEMORIZE_DATA}"


def data_relative(value: str) -> str:
    """A path under the data location as ``${UNMEMORIZE_DATA}/relative/path`` (what the
    comparison file's ``${UNMEMORIZE_DATA:-…}`` reads back), so results do not record this
    machine's directories; any other string unchanged."""
    root = data_root()
    if root is None or not isinstance(value, str) or not value:
        return value
    try:
        relative = Path(value).expanduser().resolve().relative_to(root.expanduser().resolve())
    except (ValueError, OSError):
        return value
    return f"{DATA_VARIABLE}/{relative.as_posix()}"


def _map_strings(data, convert):
    """``data`` (dicts, lists, tuples as lists) with ``convert`` applied to every string."""
    if isinstance(data, dict):
        return {key: _map_strings(value, convert) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_map_strings(value, convert) for value in data]
    return convert(data) if isinstance(data, str) else data


def _portable_string(text: str) -> str:
    if "/" not in text and "\\" not in text:
        return text
    relative = data_relative(text)
    home = str(Path.home())
    if relative == text and home not in ("", "/") and text.startswith(home + "/"):
        return "~" + text[len(home):]  # e.g. the weights of a comparison's runs in the cache
    return relative


def portable(data):
    """``data`` with every string that is a path under the data location made data-relative."""
    return _map_strings(data, _portable_string)


def relative_to(data, directory: Path):
    """``data`` as a report shows it: every path made relative to ``directory`` (the output the
    report is in), so that it names no directory of the machine it was made on; paths under the
    data location stay data-relative, and home paths stay ``~/…`` when ``directory`` is not under
    the same home."""
    base = Path(directory).expanduser().resolve()
    home = Path.home()

    def convert(text: str) -> str:
        text = _portable_string(text)
        if "\n" in text or not (text.startswith("/") or text.startswith("~/")):
            return text
        if text.startswith("~/"):
            if not base.is_relative_to(home):
                return text
            text = str(home / text[2:])
        return os.path.relpath(text, base)

    return _map_strings(data, convert)


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write under a temporary name beside ``path``, then rename: never half a file."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    with atomic_file(path) as file:
        file.write(data)


@contextlib.contextmanager
def atomic_file(path: Path):
    """A binary file to write ``path`` through piece by piece: written under a temporary name
    beside it and renamed when the block ends without an error (removed otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
        # mkstemp makes the file private (0600); an output file gets the permissions any new
        # file gets (the umask), like the folder it is in.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it
    os.umask(umask)
    return umask


def cache_dir() -> Path:
    """Per-user cache for dequantized models (``$UNMEMORIZE_CACHE`` overrides)."""
    env = os.environ.get("UNMEMORIZE_CACHE")
    path = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("unmemorize"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def staging_directory(out: Path) -> Path:
    """A new empty directory beside ``out`` to build it in, for ``publish_directory``. mkdtemp makes
    it private (0700); an output folder gets the permissions any new folder gets (the umask)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    staging.chmod(0o777 & ~_umask())
    return staging


def publish_directory(staging: Path, out: Path) -> None:
    """Rename a finished ``staging`` directory to ``out``. A rename cannot replace a non-empty
    directory, so an existing ``out`` is moved aside first and removed only afterwards: one
    complete copy is on disk at every moment."""
    # Libraries write some files privately (safetensors: 0600); a published folder is ordinary.
    umask = _umask()
    for path in staging.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data) -> None:
    """JSON written atomically; NaN as null, anything else unknown as its text."""
    import json
    import math

    def default(value):
        return None if isinstance(value, float) and math.isnan(value) else str(value)

    write_atomic(path, json.dumps(portable(data), indent=2, default=default))
