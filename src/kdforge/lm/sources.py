"""Where a causal LM's training responses come from: the data set, the teacher (SeqKD), the student (on-policy,
GKD's λ mix), the student verified by the teacher (speculative KD), or both side by side (DistiLLM-2).

A source turns each training batch into the batch the Distiller sees. Generation time is measured apart from the
training step and reported with the training log.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdforge.errors import ConfigError, IntegrityError
from kdforge.lm.generation import Continuations, continue_prompts, pack, require_generative
from kdforge.recipe import ResponsesConfig
from kdforge.sqlite_files import add_column_if_missing, connect, prepare_database, raise_sqlite_error, row_digest

IGNORE = -100


def prompts_of(batch: dict[str, Any], prompt_tokens: int) -> list[Tensor]:
    """Each row's prompt: the tokens before its first next-token target; for plain text the first ``prompt_tokens``."""
    ids, labels = batch["input"].cpu(), batch["label"].cpu()
    mask = batch.get("attention_mask")
    real = mask.cpu().bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
    out = []
    for i in range(ids.shape[0]):
        targets = torch.nonzero(labels[i] != IGNORE).flatten()
        first = int(targets[0]) if len(targets) else int(real[i].sum()) - 1
        # Plain text has a target at position 0: it has no prompt of its own, so its first tokens become one.
        length = prompt_tokens if first == 0 else first + 1
        length = min(length, int(real[i].sum()))
        if length < 1:
            raise ConfigError(f"responses: row {i} of a batch has no tokens to prompt with (empty sequence)")
        out.append(ids[i, :length])
    return out


# sha256 guards each row's token bytes (SQLite checks its own pages only); NULL in rows written before it existed.
_SCHEMA = "CREATE TABLE IF NOT EXISTS responses (id INTEGER PRIMARY KEY, tokens BLOB, sha256 TEXT)"
_REGENERATE = "delete it: the teacher's responses are then generated again"


class ResponseCache:
    """Teacher responses by sample id in SQLite: SeqKD generates each sample's response once, across runs too."""

    def __init__(self, path: Path):
        self.path, self.where = path, f"response cache {str(path)!r}"
        prepare_database(path, _SCHEMA, self.where, _REGENERATE)
        self.db = connect(path, self.where, _REGENERATE)
        self._run(_SCHEMA)
        add_column_if_missing(self._run, "responses", "sha256", "TEXT")  # a cache from before row checksums

    def _run(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """One statement's rows; a database error (locked, disk full, damaged) is one line naming the file."""
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as err:
            raise_sqlite_error(self.where, self.path, err, _REGENERATE)

    def _tokens(self, sample: int, blob: bytes, digest: str | None) -> Tensor:
        """A stored response, checked against its row's sha256 before training on it."""
        if (digest is not None and digest != row_digest(str(sample), blob)) or len(blob) % 8:
            raise IntegrityError(
                f"{self.where} is damaged (the stored response of sample {sample} does not match its sha256); "
                f"{_REGENERATE}"
            )
        return torch.from_numpy(np.frombuffer(blob, dtype=np.int64).copy())

    def get(self, ids: list[int]) -> dict[int, Tensor]:
        """The cached responses among ``ids``."""
        marks = ",".join("?" * len(ids))
        rows = self._run(f"SELECT id, tokens, sha256 FROM responses WHERE id IN ({marks})", ids)
        return {int(i): self._tokens(int(i), blob, digest) for i, blob, digest in rows}

    def put(self, items: dict[int, Tensor]) -> None:
        """Store responses (one transaction: a killed run keeps all of a batch's responses or none)."""
        rows = []
        for i, tokens in items.items():
            blob = tokens.long().numpy().tobytes()
            rows.append((i, blob, row_digest(str(i), blob)))
        try:
            with self.db:  # isolation_level=None: begin explicitly so the rows commit (or roll back) together
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany("INSERT OR REPLACE INTO responses (id, tokens, sha256) VALUES (?, ?, ?)", rows)
        except sqlite3.Error as err:
            raise_sqlite_error(self.where, self.path, err, _REGENERATE)

    def close(self) -> None:
        """Close the connection (the last one out folds SQLite's write-ahead log into the file)."""
        self.db.close()


class ResponseSource:
    """Builds each training batch's responses as ``responses.source`` says; ``stats()`` reports generation cost."""

    def __init__(
        self,
        cfg: ResponsesConfig,
        student: nn.Module,
        teacher: nn.Module | None,
        pad_id: int,
        eos_id: int | None,
        seed: int,
        cache_key: str = "",
    ):
        self.cfg, self.student, self.teacher = cfg, student, teacher
        self.pad_id, self.eos_id = pad_id, eos_id
        self.seed = seed
        # Re-seeded per batch from (seed, step, sample ids), so a resumed run draws what an uninterrupted one did
        # without saving generator state in checkpoints.
        self.generator = torch.Generator().manual_seed(seed)
        self.choice = np.random.default_rng(seed)
        self.gen_s, self.gen_tokens, self.replaced, self.batches = 0.0, 0, 0, 0
        if cfg.source in ("on_policy", "mixed", "speculative", "contrastive"):
            require_generative(student, "student")
        needs_teacher = cfg.source in ("seqkd", "speculative", "contrastive")
        if needs_teacher and teacher is None:
            raise ConfigError(
                f"responses.source={cfg.source!r} needs a teacher network that generates (teacher.kind: live with "
                "a causal LM); a store or an annotation file cannot write new text"
            )
        if needs_teacher:
            require_generative(teacher, "teacher")
        self.cache = None
        if cfg.source in ("seqkd", "contrastive"):
            folder = Path(cfg.cache_dir).expanduser()
            self.cache = ResponseCache(folder / f"seqkd-{cache_key}.sqlite")

    def __call__(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        """The batch to train on at ``step``."""
        source = self.cfg.source
        if source == "dataset":
            return batch
        self._reseed(batch, step)
        if source == "mixed" and self.choice.random() >= self.cfg.student_fraction:
            return batch  # GKD: with probability 1 − λ the fixed data set
        prompts = prompts_of(batch, self.cfg.prompt_tokens)
        started = time.perf_counter()
        if source == "seqkd":
            out = self._teacher_responses(batch, prompts)
        elif source == "contrastive":
            teacher_rows = self._teacher_responses(batch, prompts)
            student_rows = self._generate(self.student, prompts)
            out = _concat(teacher_rows, student_rows, self.pad_id)
        else:
            verifier = self.teacher if source == "speculative" else None
            out = self._generate(self.student, prompts, verifier)
        self.gen_s += time.perf_counter() - started
        self.batches += 1
        device = batch["input"].device
        moved = {k: v.to(device) for k, v in out.items()}
        moved["index"] = batch["index"] if source != "contrastive" else torch.cat([batch["index"], batch["index"]])
        return moved

    def _reseed(self, batch: dict[str, Any], step: int) -> None:
        """Seed both generators from the run's seed, the step and the batch's sample ids (unique per micro-batch)."""
        ids = [int(i) for i in batch["index"].reshape(-1).tolist()] if "index" in batch else []
        entropy = np.random.SeedSequence([self.seed, step, *ids])
        self.generator.manual_seed(int(entropy.generate_state(1, dtype=np.uint64)[0] >> 1))
        self.choice = np.random.default_rng(entropy)

    def _generate(self, model: nn.Module, prompts: list[Tensor], verifier: nn.Module | None = None) -> dict[str, Any]:
        cont = continue_prompts(
            model,
            prompts,
            self.cfg.max_new_tokens,
            self.cfg.temperature,
            self.pad_id,
            self.eos_id,
            self.generator,
            verifier,
            self.cfg.accept_top_k,
        )
        self.gen_tokens += int(cont.lengths.sum())
        self.replaced += cont.replaced
        return pack(prompts, cont, self.pad_id)

    def _teacher_responses(self, batch: dict[str, Any], prompts: list[Tensor]) -> dict[str, Any]:
        """SeqKD: the teacher's greedy (or sampled) response per sample id, generated once and cached."""
        assert self.cache is not None and self.teacher is not None
        ids = [int(i) for i in batch["index"].tolist()]
        known = self.cache.get(ids)
        missing = [k for k, i in enumerate(ids) if i not in known]
        if missing:
            cont = continue_prompts(
                self.teacher,
                [prompts[k] for k in missing],
                self.cfg.max_new_tokens,
                self.cfg.teacher_temperature,
                self.pad_id,
                self.eos_id,
                self.generator,
            )
            self.gen_tokens += int(cont.lengths.sum())
            made = {ids[k]: cont.tokens[j, : int(cont.lengths[j])] for j, k in enumerate(missing)}
            self.cache.put(made)
            known.update(made)
        width = max(len(known[i]) for i in ids)
        tokens = torch.full((len(ids), max(width, 1)), self.pad_id, dtype=torch.long)
        for row, i in enumerate(ids):
            tokens[row, : len(known[i])] = known[i]
        lengths = torch.tensor([len(known[i]) for i in ids])
        return pack(prompts, Continuations(tokens, lengths), self.pad_id)

    def stats(self) -> dict[str, float]:
        """Generation seconds, tokens generated, speculative replacements, and batches with generated responses."""
        return {
            "gen_s": round(self.gen_s, 3),
            "gen_tokens": self.gen_tokens,
            "gen_batches": self.batches,
            "spec_replaced": self.replaced,
        }


def _concat(a: dict[str, Tensor], b: dict[str, Tensor], pad_id: int) -> dict[str, Tensor]:
    """Teacher-written rows then student-written rows, padded to one width, marked by ``from_student``."""
    width = max(a["input"].shape[1], b["input"].shape[1])

    def widen(x: Tensor, fill: Any) -> Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=fill)

    return {
        "input": torch.cat([widen(a["input"], pad_id), widen(b["input"], pad_id)]),
        "attention_mask": torch.cat([widen(a["attention_mask"], False), widen(b["attention_mask"], False)]),
        "label": torch.cat([widen(a["label"], IGNORE), widen(b["label"], IGNORE)]),
        "from_student": torch.cat(
            [torch.zeros(len(a["input"]), dtype=torch.bool), torch.ones(len(b["input"]), dtype=torch.bool)]
        ),
    }


def cache_key(*parts: Any) -> str:
    """A short key over JSON-able parts (teacher fingerprint, data fingerprint, generation settings)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
