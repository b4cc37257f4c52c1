"""A teacher with another tokenizer: it reads the student's text in its own tokens, and its next-token distributions
at positions where both tokenizations end at the same character are mapped onto the student's vocabulary.

Shared tokens keep their probability (renormalised, the lost mass counted); positions without a common boundary
get no teacher target (they are masked out of the teacher terms; a CE term still trains on them). The measurement
behind this choice: kdforge/lm/cross_tokenizer.py and benchmarks/results/llm_vocab.json (93.5% of Gemma → SmolLM2
student positions align, 97.3% of the mass kept).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdforge.lm.cross_tokenizer import Alignment, align_ids, cross_tokenizer_signal
from kdforge.signals import Needs, TeacherOutput
from kdforge.teachers.base import Teacher
from kdforge.teachers.live import Live


class CrossTokenizerTeacher(Teacher):
    """Wrap a live causal-LM teacher whose tokenizer differs from the student's (the 'shared' vocabulary case)."""

    def __init__(
        self,
        live: Live,
        teacher_tokenizer: Any,
        student_tokenizer: Any,
        token_map: torch.Tensor,
        student_rows: int,
        k: int = 64,
    ):
        self.live, self.t_tok, self.s_tok, self.map, self.k = live, teacher_tokenizer, student_tokenizer, token_map, k
        self.student_rows = student_rows
        self.fingerprint = f"cross-{live.fingerprint}"
        self.positions = self.aligned = self.unmatched_rows = 0
        self.dropped = 0.0
        pad = getattr(teacher_tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else (getattr(teacher_tokenizer, "eos_token_id", None) or 0)

    @property
    def model(self) -> nn.Module | None:
        """None: the network reads its own tokens, so it is neither run on the student's ids nor asked to write them.

        Evaluation then reports the student's perplexity and accuracy without teacher agreement or KL, and sources
        that need the teacher to generate (SeqKD, speculative) are refused.
        """
        return None

    def to(self, device: torch.device | str) -> CrossTokenizerTeacher:
        """Move the teacher network to ``device``."""
        self.live.to(device)
        return self

    def signals(self, batch: dict[str, Any], needs: Needs) -> TeacherOutput:
        """Mapped top-k targets (B, S, k) over the student's rows, and the mask of positions that received one."""
        ids = batch["input"].cpu()
        real = batch.get("attention_mask")
        real = real.cpu().bool() if real is not None else torch.ones_like(ids, dtype=torch.bool)
        alignments, teacher_rows = [], []
        for i in range(ids.shape[0]):
            own = ids[i][real[i]].tolist()
            pair = align_ids(own, self.t_tok, self.s_tok)
            if pair is None:
                # Neither the round trip nor the prefix decodes give the row's character spans: no target for it.
                self.unmatched_rows += 1
                empty = torch.zeros(0, dtype=torch.long)
                alignments.append(Alignment(empty, empty.bool()))
                teacher_rows.append(torch.tensor([self.pad_id]))
                continue
            alignments.append(pair.alignment)
            teacher_rows.append(torch.tensor(pair.teacher_ids or [self.pad_id]))
        width = max(len(r) for r in teacher_rows)
        t_ids = torch.full((len(teacher_rows), width), self.pad_id, dtype=torch.long)
        t_mask = torch.zeros((len(teacher_rows), width), dtype=torch.bool)
        for i, row in enumerate(teacher_rows):
            t_ids[i, : len(row)], t_mask[i, : len(row)] = row, True
        t_batch = {"input": t_ids, "attention_mask": t_mask}
        head = self.live.signals(t_batch, Needs(teacher_logits=True, teacher_hidden=True)).logits
        cross = cross_tokenizer_signal(
            head, alignments, self.map, self.student_rows, ids.shape[1], self.k, t_mask, real
        )
        self.positions += int(real.sum())
        self.aligned += int(cross.mask.sum())
        self.dropped += float(cross.dropped.sum())
        return TeacherOutput(logits=cross.signal, mask=cross.mask.to(batch["input"].device))

    def stats(self) -> dict[str, float]:
        """Share of student positions that got a target, mean teacher mass dropped there, rows that did not match."""
        return {
            "aligned_fraction": self.aligned / max(self.positions, 1),
            "mean_dropped_mass": self.dropped / max(self.aligned, 1),
            "unmatched_rows": self.unmatched_rows,
        }

    def close(self) -> None:
        """Release the wrapped teacher's hooks."""
        self.live.close()
