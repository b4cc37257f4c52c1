"""Build a store: run the teacher once over a data set and write checksummed shards; resume where a build stopped."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kdforge.capture import Recorder
from kdforge.errors import ConfigError, IntegrityError, ShapeMismatchError
from kdforge.files import atomic_write, atomic_write_text, read_json_record, sealed_json, sha256_file
from kdforge.signals import Needs
from kdforge.store.codecs import build_codec
from kdforge.store.manifest import Manifest, shard_name
from kdforge.version import __version__

FEATURE_PREFIX = "feature/"
FEATURE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def ids_digest(ids: torch.Tensor) -> str:
    """sha256 of the ordered sample ids a store covers."""
    return hashlib.sha256(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def fidelity_sums(
    codec: Any, logits: torch.Tensor, encoded: dict[str, torch.Tensor], vocab: int
) -> tuple[float, float, int]:
    """Summed KL(full ‖ decoded) and top-1 agreement over the positions of one batch, and how many positions."""
    full = torch.log_softmax(logits.float() / float(getattr(codec, "temperature", 1.0)), dim=-1)
    decoded = codec.decode(encoded, vocab)
    if hasattr(decoded, "logits"):
        approx = torch.log_softmax(decoded.logits.float(), dim=-1)
    else:
        approx = decoded.to_dense_logprobs()
    kl = (full.exp() * (full - approx)).sum(-1)
    top1 = (full.argmax(-1) == approx.argmax(-1)).float()
    return float(kl.sum()), float(top1.sum()), int(kl.numel())


def _sidecar(root: Path, name: str) -> Path:
    return root / "shards" / f"{name}.json"


def completed_shards(root: Path, plan: Manifest) -> dict[str, dict[str, Any]]:
    """Shards already on disk whose sidecar record and checksum agree (anything else is rebuilt, with a warning)."""
    done: dict[str, dict[str, Any]] = {}
    for i in range(plan.num_shards):
        name = shard_name(i)
        meta, data = _sidecar(root, name), root / "shards" / name
        if not (meta.is_file() or data.exists()):
            continue  # not built yet
        try:
            record = read_json_record(meta, "it is rebuilt", "store shard record") if meta.is_file() else None
        except IntegrityError as err:
            record, problem = None, str(err)
        else:
            problem = f"store shard {str(data)!r} is missing or does not match its recorded sha256; it is rebuilt"
        if record is not None and data.is_file() and record.get("sha256") == sha256_file(data):
            done[name] = record
        elif meta.is_file():
            # A shard killed between its data and its record has no record yet: that is no damage worth a word.
            print(f"warning: {problem}", file=sys.stderr)
    return done


def plan_store(
    teacher_fingerprint: str,
    dataset: Any,
    data_fingerprint: str,
    codec: str,
    codec_params: dict[str, Any],
    shard_size: int,
    num_outputs: int,
    teacher: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    views: int = 1,
    view_seed: int = 0,
    features: list[str] | tuple[str, ...] = (),
    feature_dtype: str = "fp16",
) -> Manifest:
    """The manifest a build of ``dataset`` with these settings will produce (no shards yet).

    An augmented data set is stored as ``views`` views per sample, each drawn from (``view_seed``, view, sample id);
    training epoch ``e`` then reads view ``e % views``, and the student sees the very image the teacher saw.
    """
    augment = getattr(dataset, "augment", "none")
    if augment == "none" and views != 1:
        raise ConfigError(f"store.views={views} needs an augmented data set (data.params.augment), got augment=none")
    view: dict[str, Any] = {"augment": augment}
    if augment != "none":
        view.update(views=views, seed=view_seed, epoch_reads="view = epoch % views; draws keyed by (seed, view, id)")
    build_codec(codec, **codec_params)
    k = codec_params.get("k")
    if k is not None and not 0 < int(k) <= num_outputs:
        raise ConfigError(f"store.top_k={k} must be between 1 and the teacher's {num_outputs} outputs")
    if feature_dtype not in FEATURE_DTYPES:
        raise ConfigError(f"store.feature_dtype={feature_dtype!r}; valid: {', '.join(FEATURE_DTYPES)}")
    stored_features = {"names": list(dict.fromkeys(features)), "dtype": feature_dtype} if features else {}
    return Manifest(
        teacher_fingerprint=teacher_fingerprint,
        data_fingerprint=data_fingerprint,
        split=getattr(dataset, "split", "train"),
        num_samples=len(dataset),
        ids_sha256=ids_digest(dataset.indices),
        codec=codec,
        codec_params=dict(codec_params),
        view=view,
        shard_size=shard_size,
        num_outputs=num_outputs,
        features=stored_features,
        teacher=teacher or {},
        data=data or {},
        kdforge_version=__version__,
    )


def _check_views(dataset: Any, plan: Manifest) -> None:
    """Refuse an augmented data set whose draws are not the store's: row v * n + p must be view v of sample p."""
    seed, views = getattr(dataset, "augment_seed", None), getattr(dataset, "views", None)
    if seed != plan.view["seed"] or views not in (None, plan.num_views):
        raise ConfigError(
            f"build_store: the data set draws views with augment_seed={seed}, views={views}; the store expects "
            f"augment_seed={plan.view['seed']}, views={plan.num_views} (pass the data set through "
            "with_augment(dataset, augment, augment_seed=..., views=...) first)"
        )


def build_store(
    root: str | Path,
    teacher: Any,
    dataset: Any,
    plan: Manifest,
    batch_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
    on_shard: Callable[[int], None] | None = None,
) -> list[str]:
    """Compute this process's missing shards (shard i belongs to rank i % world_size); returns the names written.

    An augmented ``dataset`` must already draw the store's views (``augment_seed`` = the plan's view seed).
    """
    root = Path(root)
    model = getattr(teacher, "model", None)
    if plan.feature_names and isinstance(model, torch.nn.Module):
        # Check the feature paths before anything is written (the Recorder names the closest valid paths).
        Recorder(model, plan.feature_names).remove()
    (root / "shards").mkdir(parents=True, exist_ok=True)
    existing = root / "manifest.json"
    if existing.is_file():
        problem = Manifest.load(root).mismatch(plan)
        if problem:
            raise ConfigError(
                f"store {str(root)!r} already holds other signals ({problem}); it is left untouched — "
                "choose another store path or delete that folder"
            )
    elif rank == 0:
        plan.save(root)
    codec = build_codec(plan.codec, **plan.codec_params)
    done = completed_shards(root, plan)
    needs = Needs(teacher_logits=True, teacher_features=plan.feature_names)
    feature_dtype = FEATURE_DTYPES[plan.features.get("dtype", "fp16")]
    if getattr(dataset, "augmented", False):
        _check_views(dataset, plan)
    written = []
    for i in range(rank, plan.num_shards, world_size):
        name = shard_name(i)
        if name in done:
            continue
        start, stop = i * plan.shard_size, min((i + 1) * plan.shard_size, plan.num_rows)
        parts: dict[str, list[torch.Tensor]] = {"index": []}
        kl_sum = top1_sum = 0.0
        positions = 0
        for b in range(start, stop, batch_size):
            batch = dataset.__getitems__(list(range(b, min(b + batch_size, stop))))
            out = teacher.signals(batch, needs)
            logits = out.logits.logits.cpu()
            for feature in plan.feature_names:
                # Stored per sample as recorded (a sequence model's features keep their padding positions).
                parts.setdefault(FEATURE_PREFIX + feature, []).append(out.features[feature].cpu().to(feature_dtype))
            if logits.dim() == 3:
                # Sequences: one record per real token, packed; the mask says where each one goes back.
                mask = batch.get("attention_mask")
                mask = torch.ones(logits.shape[:2], dtype=torch.bool) if mask is None else mask.cpu().bool()
                if mask.shape != logits.shape[:2]:
                    raise ShapeMismatchError(
                        f"attention_mask has shape {tuple(mask.shape)}, the teacher's logits {tuple(logits.shape)}; "
                        "expected (batch, sequence) to match"
                    )
                parts.setdefault("mask", []).append(mask)
                logits = logits[mask]
            encoded = codec.encode(logits)
            for key, value in encoded.items():
                parts.setdefault(key, []).append(value)
            parts["index"].append(batch["index"].to(torch.int64))
            if "view" in batch:
                parts.setdefault("view", []).append(batch["view"].to(torch.int32))
            kl, top1, n = fidelity_sums(codec, logits, encoded, plan.num_outputs)
            kl_sum, top1_sum, positions = kl_sum + kl, top1_sum + top1, positions + n
        tensors = {k: torch.cat(v).contiguous() for k, v in parts.items()}
        path = root / "shards" / name
        atomic_write(path, lambda tmp, t=tensors: save_file(t, str(tmp)))
        record = {
            "rows": stop - start,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "kl_sum": kl_sum,
            "top1_sum": top1_sum,
            "positions": positions,
        }
        atomic_write_text(_sidecar(root, name), sealed_json(record, indent=None))
        written.append(name)
        if on_shard is not None:
            on_shard(i)
    return written


IDS_FILE = "ids.safetensors"


def write_id_table(root: Path, plan: Manifest) -> dict[str, str]:
    """Gather every shard's ``index`` (and ``view``) column into one file; returns its name and sha256."""
    columns: dict[str, list[torch.Tensor]] = {}
    for i in range(plan.num_shards):
        with safe_open(str(root / "shards" / shard_name(i)), framework="pt") as shard:
            for key in ("index", "view"):
                if key in shard.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    columns.setdefault(key, []).append(shard.get_tensor(key))
    tensors = {k: torch.cat(v).contiguous() for k, v in columns.items()}
    path = root / IDS_FILE
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
    return {"name": IDS_FILE, "sha256": sha256_file(path)}


def finalize_store(root: str | Path, plan: Manifest) -> Manifest:
    """Merge the shard records into the manifest (main process, after every rank finished)."""
    root = Path(root)
    done = completed_shards(root, plan)
    missing = [shard_name(i) for i in range(plan.num_shards) if shard_name(i) not in done]
    if missing:
        raise ConfigError(
            f"store {str(root)!r} is missing {len(missing)} shard(s), e.g. {missing[0]}; run the build again"
        )
    plan.shards = {shard_name(i): done[shard_name(i)] for i in range(plan.num_shards)}
    plan.ids_file = write_id_table(root, plan)
    # Per position: one per sample for classification, one per token for sequences.
    positions = sum(r["positions"] for r in plan.shards.values())
    plan.fidelity = {
        "kl_full_vs_stored": sum(r["kl_sum"] for r in plan.shards.values()) / positions,
        "top1_agreement": sum(r["top1_sum"] for r in plan.shards.values()) / positions,
        "positions": positions,
    }
    plan.complete = True
    plan.content_sha256 = plan.content_hash()
    plan.save(root)
    return plan
