"""The store manifest: what was computed (teacher, data, view, codec) and the shards that hold it, with checksums."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdforge.errors import ConfigError
from kdforge.files import atomic_write_text, read_json_record, sealed_json

FORMAT = 1
MANIFEST = "manifest.json"
# Fields that identify what a store contains; a store is reused or resumed only when all of them match.
IDENTITY = (
    "teacher_fingerprint",
    "data_fingerprint",
    "split",
    "num_samples",
    "ids_sha256",
    "codec",
    "codec_params",
    "view",
    "shard_size",
    "num_outputs",
    "features",
)


@dataclass
class Manifest:
    """Everything needed to trust and read a store."""

    teacher_fingerprint: str
    data_fingerprint: str
    split: str
    num_samples: int
    ids_sha256: str
    codec: str
    codec_params: dict[str, Any]
    view: dict[str, Any]
    shard_size: int
    num_outputs: int
    # Named teacher features stored beside the logits: {"names": [module paths], "dtype": "fp16"}; empty when none.
    features: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The sample id (and view) of every row in one small file, so a reader never scans the shards to find a row.
    ids_file: dict[str, str] = field(default_factory=dict)
    fidelity: dict[str, float] = field(default_factory=dict)
    complete: bool = False
    content_sha256: str | None = None
    kdforge_version: str = ""
    format: int = FORMAT

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Teacher module paths whose outputs the store holds."""
        return tuple(self.features.get("names", ()))

    @property
    def num_views(self) -> int:
        """How many augmented views of every sample the store holds (1 without augmentation)."""
        return int(self.view.get("views", 1))

    @property
    def num_rows(self) -> int:
        """Stored records: one per sample and view; row ``v * num_samples + p`` is view ``v`` of sample ``p``."""
        return self.num_samples * self.num_views

    @property
    def num_shards(self) -> int:
        """How many shards a complete store has."""
        return -(-self.num_rows // self.shard_size)

    def identity(self) -> dict[str, Any]:
        """The fields that must match for a store to be reused."""
        return {k: getattr(self, k) for k in IDENTITY}

    def mismatch(self, other: Manifest) -> str | None:
        """Name of the first identity field that differs, with both values; None when they agree."""
        for key in IDENTITY:
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                return f"{key}: store has {mine!r}, the recipe gives {theirs!r}"
        return None

    def content_hash(self) -> str:
        """sha256 over the ordered shard checksums: equal for equal content, however the build was interrupted."""
        identity = self.identity()
        if not identity["features"]:
            del identity["features"]  # stores without features hash as they did before features existed
        h = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
        for i in range(self.num_shards):
            h.update(self.shards[shard_name(i)]["sha256"].encode())
        return h.hexdigest()

    def save(self, root: Path) -> None:
        """Atomically rewrite the manifest."""
        atomic_write_text(root / MANIFEST, sealed_json(asdict(self), indent=1))

    @classmethod
    def load(cls, root: Path) -> Manifest:
        """Read a manifest; a missing or unreadable one is a clear error naming the file."""
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise ConfigError(f"{str(root)!r} is not a kdforge store (no {MANIFEST}); build it with `kdforge cache`")
        fix = (
            f"delete it and run `kdforge cache` with the store's recipe again (shards that match their checksums "
            f"are kept), or delete the folder {str(root)!r} to rebuild the store"
        )
        raw = read_json_record(path, fix, "store manifest")
        if raw.get("format") != FORMAT:
            raise ConfigError(f"{str(path)!r} has store format {raw.get('format')!r}; this kdforge reads {FORMAT}")
        return cls(**raw)


def shard_name(i: int) -> str:
    """File name of shard ``i``."""
    return f"shard-{i:05d}.safetensors"
