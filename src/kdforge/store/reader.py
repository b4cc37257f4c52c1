"""Read a store: verified shards, random access by sample id, loading in a background thread."""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from kdforge.errors import ConfigError, IntegrityError
from kdforge.files import sha256_file
from kdforge.signals import DenseSignal, FeatureSignal, SparseSignal, TeacherOutput
from kdforge.store.codecs import build_codec
from kdforge.store.manifest import Manifest, shard_name
from kdforge.store.writer import FEATURE_PREFIX

OFFSETS = "_offsets"  # in memory only: where each sample's packed token records start
SAMPLE_FIELDS = ("index", "view", "mask", OFFSETS)


def with_offsets(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Add the start of every sample's token records to a sequence shard (or joined store); others pass through."""
    if "mask" in tensors:
        counts = tensors["mask"].sum(1)
        tensors[OFFSETS] = torch.cumsum(counts, 0) - counts
    return tensors


def gather(
    tensors: dict[str, Tensor], rows: Tensor, pad: dict[str, Tensor], features: tuple[str, ...] | None = None
) -> dict[str, Tensor]:
    """The codec fields of ``rows``; for sequences, token records unpacked to (B, S, ...) with ``pad`` at padding."""
    stored = [k for k in tensors if k.startswith(FEATURE_PREFIX)]
    # Only the features asked for are gathered (None: all of them): a batch reads nothing it will not use.
    per_sample = stored if features is None else [FEATURE_PREFIX + f for f in features if FEATURE_PREFIX + f in tensors]
    fields = [k for k in tensors if k not in SAMPLE_FIELDS and k not in stored]
    out = {k: tensors[k][rows] for k in per_sample}
    if "mask" not in tensors:
        return {**out, **{k: tensors[k][rows] for k in fields}}
    mask = tensors["mask"][rows]
    # Token j of a sample sits at its offset plus the number of real tokens before j.
    where = (tensors[OFFSETS][rows, None] + mask.long().cumsum(1) - 1)[mask]
    out["mask"] = mask
    for key in fields:
        value = tensors[key]
        full = pad[key].to(value.dtype).expand(*mask.shape, *value.shape[1:]).clone()
        full[mask] = value[where]
        out[key] = full
    return out


class StoreReader:
    """Signals of a complete store, looked up by sample id; shards stream in on a worker thread."""

    def __init__(self, root: str | Path, verify: bool = True, resident_bytes: int = 1 << 30, cached_shards: int = 8):
        self.root = Path(root)
        # `kdforge cache` rebuilds exactly the files that fail their checksums (and rewrites the id table).
        self._fix = "it is not used: run `kdforge cache` with the store's recipe again to rebuild it"
        self.manifest = Manifest.load(self.root)
        if not self.manifest.complete:
            raise ConfigError(f"store {str(self.root)!r} is incomplete; run `kdforge cache` again to resume it")
        self.codec = build_codec(self.manifest.codec, **self.manifest.codec_params)
        self.verify = verify
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdforge-store")
        # A store that fits in memory is requested whole, in order: the worker streams it while training starts.
        # A larger one is read on demand and kept in a small LRU of shards.
        fits = sum(int(r["bytes"]) for r in self.manifest.shards.values()) <= resident_bytes
        self._futures: list[Future[dict[str, Tensor]] | None] = [
            self._pool.submit(self._load, i) if fits else None for i in range(self.manifest.num_shards)
        ]
        self._shards: OrderedDict[int, dict[str, Tensor]] = OrderedDict()
        self._cached_shards = cached_shards
        self._position: Tensor | None = None
        self._id_span = 0
        self._pad_row: dict[str, Tensor] | None = None
        # A store that fits in memory is joined into one tensor per field: a batch is then one index per field.
        self._joined: dict[str, Tensor] | None = None
        self._join = sum(int(r["bytes"]) for r in self.manifest.shards.values()) <= resident_bytes
        self._resident_bytes = resident_bytes
        self.loads_on_demand = 0  # shard reads a step had to wait for (not prefetched)

    def _load(self, i: int) -> dict[str, Tensor]:
        name = shard_name(i)
        path = self.root / "shards" / name
        record = self.manifest.shards.get(name)
        if record is None or not path.is_file():
            raise IntegrityError(f"store shard {str(path)!r} is missing; {self._fix}")
        if self.verify and sha256_file(path) != record["sha256"]:
            raise IntegrityError(f"store shard {str(path)!r} does not match its sha256 in the manifest; {self._fix}")
        return with_offsets(load_file(str(path)))

    def shard(self, i: int) -> dict[str, Tensor]:
        """Shard ``i``'s tensors (waits for the background load the first time)."""
        if i in self._shards:
            self._shards.move_to_end(i)
            return self._shards[i]
        future = self._futures[i]
        if future is None:
            self.loads_on_demand += 1
        self._shards[i] = future.result() if future is not None else self._load(i)
        self._futures[i] = None  # the LRU (or the joined table) holds it from now on
        if not self._join and len(self._shards) > self._cached_shards:
            self._shards.popitem(last=False)
        return self._shards[i]

    def _row_keys(self) -> tuple[Tensor, Tensor | None]:
        """Sample id (and view) of every stored row, in row order, without holding the shards."""
        record = self.manifest.ids_file
        if record:
            path = self.root / record["name"]
            if not path.is_file() or (self.verify and sha256_file(path) != record["sha256"]):
                raise IntegrityError(
                    f"store id table {str(path)!r} is missing or does not match its sha256; {self._fix}"
                )
            table = load_file(str(path))
            return table["index"], table.get("view")
        # Stores written before the id table existed: one pass over the shards, one shard at a time.
        ids, views = [], []
        for i in range(self.manifest.num_shards):
            shard = self._load(i)
            ids.append(shard["index"])
            if "view" in shard:
                views.append(shard["view"])
        return torch.cat(ids), torch.cat(views) if views else None

    def _positions(self) -> Tensor:
        if self._position is None:
            ids, views = self._row_keys()
            self._id_span = int(ids.max()) + 1
            keys = ids if views is None else views.long() * self._id_span + ids
            table = torch.full((int(keys.max()) + 1,), -1, dtype=torch.int64)
            table[keys] = torch.arange(len(keys))
            self._position = table
            if self._join:
                shards = [self.shard(i) for i in range(self.manifest.num_shards)]
                keep = [k for k in shards[0] if k not in ("index", "view", OFFSETS)]
                joined = {k: torch.cat([sh[k] for sh in shards]) for k in keep}
                self._joined = with_offsets(self.codec.widen(joined, self._resident_bytes))
                # Drop every other reference to the per-shard tensors so the store is held once, not twice.
                self._shards.clear()
                self._futures = [None] * len(self._futures)
        return self._position

    def _key_of(self, ids: Tensor, views: Tensor | None) -> Tensor:
        ids = ids.cpu().long()
        stored_views = self.manifest.num_views
        if self.manifest.view.get("augment", "none") == "none":
            return ids
        if views is None:
            raise ConfigError(
                f"store {str(self.root)!r} holds {stored_views} augmented view(s) per sample, but the batch has "
                "no 'view'; train with the store's data.params.augment so each epoch reads its view"
            )
        views = views.cpu().long()
        if int(ids.max()) >= self._id_span or int(ids.min()) < 0:
            # Keys are view * span + id: an id past the span would alias another sample's other view.
            raise ConfigError(f"store {str(self.root)!r} has no signal for some sample ids of this batch")
        if bool((views >= stored_views).any()) or bool((views < 0).any()):
            raise ConfigError(
                f"store {str(self.root)!r} holds views 0..{stored_views - 1}, "
                f"the batch asks for view {int(views.max())}"
            )
        return views * self._id_span + ids

    def _rows_of(self, ids: Tensor, views: Tensor | None) -> Tensor:
        table = self._positions()
        keys = self._key_of(ids, views)
        # One index and one reduction: this runs on every training step.
        pos = table[keys] if int(keys.max()) < len(table) else None
        if pos is None or int(pos.min()) < 0:
            raise ConfigError(f"store {str(self.root)!r} has no signal for some sample ids of this batch")
        return pos

    @property
    def in_memory(self) -> bool:
        """Whether the whole store is (or is being) loaded into memory, rather than streamed shard by shard."""
        return self._join

    def prefetch(self, ids: Tensor, views: Tensor | None = None) -> None:
        """Start loading, on the worker thread, the shards a coming batch will read (no-op for a joined store)."""
        if self._join:
            return
        for s in (self._rows_of(ids, views) // self.manifest.shard_size).unique().tolist():
            if s not in self._shards and self._futures[s] is None:
                self._futures[s] = self._pool.submit(self._load, s)

    def _pad(self) -> dict[str, Tensor]:
        # Padding positions get a valid record (the uniform distribution) so nothing downstream sees NaN.
        if self._pad_row is None:
            self._pad_row = self.codec.encode(torch.zeros(1, self.manifest.num_outputs))
        return self._pad_row

    def rows(
        self, ids: Tensor, views: Tensor | None = None, features: tuple[str, ...] | None = None
    ) -> dict[str, Tensor]:
        """Encoded rows for sample ``ids`` (at ``views`` for an augmented store) in the given order.

        Sequence stores also return ``mask`` (B, S), and every field per position (B, S, ...), padding included.
        """
        pos = self._rows_of(ids, views)
        if self._joined is not None:
            return gather(self._joined, pos, self._pad(), features)
        shard_of, row_of = pos // self.manifest.shard_size, pos % self.manifest.shard_size
        out: dict[str, Tensor] = {}
        for s in shard_of.unique().tolist():
            mask = shard_of == s
            for key, value in gather(self.shard(s), row_of[mask], self._pad(), features).items():
                if key not in out:
                    out[key] = torch.empty((len(ids), *value.shape[1:]), dtype=value.dtype)
                out[key][mask] = value
        return out

    def signal(self, ids: Tensor, views: Tensor | None = None) -> DenseSignal | SparseSignal:
        """Decoded teacher logits for sample ``ids`` (at ``views`` for an augmented store)."""
        logits = self.lookup(ids, views).logits
        assert logits is not None
        return logits

    def lookup(
        self, ids: Tensor, views: Tensor | None = None, features: tuple[str, ...] | None = None
    ) -> TeacherOutput:
        """Everything stored for sample ``ids``: decoded logits, named features (float32) and the token mask."""
        encoded = self.rows(ids, views, features)
        mask = encoded.pop("mask", None)
        names = [k for k in encoded if k.startswith(FEATURE_PREFIX)]
        named = {k[len(FEATURE_PREFIX) :]: encoded.pop(k).float() for k in names}
        return TeacherOutput(
            logits=self.codec.decode(encoded, self.manifest.num_outputs),
            features=FeatureSignal(named) if named else None,
            mask=mask,
        )

    def size_bytes(self) -> int:
        """Bytes of all shards."""
        return sum(int(r["bytes"]) for r in self.manifest.shards.values())

    def close(self) -> None:
        """Stop the loader thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)
