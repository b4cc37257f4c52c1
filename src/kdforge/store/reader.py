"""Read a store: verified shards, random access by sample id, loading in a background thread."""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from kdforge.engine.atomic import sha256_file
from kdforge.errors import ConfigError, IntegrityError
from kdforge.signals import DenseSignal, SparseSignal
from kdforge.store.codecs import build_codec
from kdforge.store.manifest import Manifest, shard_name


class StoreReader:
    """Signals of a complete store, looked up by sample id; shards stream in on a worker thread."""

    def __init__(self, root: str | Path, verify: bool = True, resident_bytes: int = 1 << 30, cached_shards: int = 8):
        self.root = Path(root)
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
        # A store that fits in memory is joined into one tensor per field: a batch is then one index per field.
        self._joined: dict[str, Tensor] | None = None
        self._join = sum(int(r["bytes"]) for r in self.manifest.shards.values()) <= resident_bytes

    def _load(self, i: int) -> dict[str, Tensor]:
        name = shard_name(i)
        path = self.root / "shards" / name
        record = self.manifest.shards.get(name)
        if record is None or not path.is_file():
            raise IntegrityError(f"store shard {str(path)!r} is missing")
        if self.verify and sha256_file(path) != record["sha256"]:
            raise IntegrityError(f"store shard {str(path)!r} does not match its sha256 in the manifest")
        return load_file(str(path))

    def shard(self, i: int) -> dict[str, Tensor]:
        """Shard ``i``'s tensors (waits for the background load the first time)."""
        if i in self._shards:
            self._shards.move_to_end(i)
            return self._shards[i]
        future = self._futures[i]
        self._shards[i] = future.result() if future is not None else self._load(i)
        self._futures[i] = None  # the LRU (or the joined table) holds it from now on
        if not self._join and len(self._shards) > self._cached_shards:
            self._shards.popitem(last=False)
        return self._shards[i]

    def _positions(self) -> Tensor:
        if self._position is None:
            shards = [self.shard(i) for i in range(self.manifest.num_shards)]
            ids = torch.cat([sh["index"] for sh in shards])
            self._id_span = int(ids.max()) + 1
            if "view" in shards[0]:
                ids = torch.cat([sh["view"].long() for sh in shards]) * self._id_span + ids
            table = torch.full((int(ids.max()) + 1,), -1, dtype=torch.int64)
            table[ids] = torch.arange(len(ids))
            self._position = table
            if self._join:
                keys = [k for k in shards[0] if k not in ("index", "view")]
                self._joined = {k: torch.cat([sh[k] for sh in shards]) for k in keys}
                # Drop every other reference to the per-shard tensors so the store is held once, not twice.
                self._shards.clear()
                self._futures = [None] * len(self._futures)
        return self._position

    def rows(self, ids: Tensor, views: Tensor | None = None) -> dict[str, Tensor]:
        """Encoded rows for sample ``ids`` (at ``views`` for an augmented store) in the given order."""
        table = self._positions()
        ids = ids.cpu().long()
        stored_views = self.manifest.num_views
        if self.manifest.view.get("augment", "none") != "none":
            if views is None:
                raise ConfigError(
                    f"store {str(self.root)!r} holds {stored_views} augmented view(s) per sample, but the batch has "
                    "no 'view'; train with the store's data.params.augment so each epoch reads its view"
                )
            views = views.cpu().long()
            if bool((views >= stored_views).any()) or bool((views < 0).any()):
                raise ConfigError(
                    f"store {str(self.root)!r} holds views 0..{stored_views - 1}, the batch asks for "
                    f"view {int(views.max())}"
                )
            ids = views * self._id_span + ids
        if int(ids.max()) >= len(table) or bool((table[ids] < 0).any()):
            raise ConfigError(f"store {str(self.root)!r} has no signal for some sample ids of this batch")
        pos = table[ids]
        if self._joined is not None:
            return {k: v[pos] for k, v in self._joined.items()}
        shard_of, row_of = pos // self.manifest.shard_size, pos % self.manifest.shard_size
        out: dict[str, Tensor] = {}
        for s in shard_of.unique().tolist():
            mask = shard_of == s
            for key, value in self.shard(s).items():
                if key in ("index", "view"):
                    continue
                if key not in out:
                    out[key] = torch.empty((len(ids), *value.shape[1:]), dtype=value.dtype)
                out[key][mask] = value[row_of[mask]]
        return out

    def signal(self, ids: Tensor, views: Tensor | None = None) -> DenseSignal | SparseSignal:
        """Decoded teacher signal for sample ``ids`` (at ``views`` for an augmented store)."""
        return self.codec.decode(self.rows(ids, views), self.manifest.num_outputs)

    def size_bytes(self) -> int:
        """Bytes of all shards."""
        return sum(int(r["bytes"]) for r in self.manifest.shards.values())

    def close(self) -> None:
        """Stop the loader thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)
