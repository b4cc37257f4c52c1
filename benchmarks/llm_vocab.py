"""Vocabulary alignment, Gemma-3-270M teacher → SmolLM2-135M student, on held-out Austen ('persuasion').

Measures what the cross-tokenizer path keeps and what it loses, and the numbers behind choosing direct mapping at
aligned positions plus ULD for the rest (GOLD-style) over ULD alone:

* shared tokens in both directions (``compare_vocabularies``);
* how many student positions end at the same character as a teacher position (aligned), how many only contain a
  teacher prefix (the ULD rest), and how many index-paired positions (the paper's ULD pairing) share a prefix;
* the teacher mass the direct map keeps at aligned positions (mean / quantiles of the dropped mass);
* whether the mapped target still names the right token: its top-1 against the student's actual next token, next to
  the teacher's own top-1 against its own next token at the same positions;
* ULD's blindness to token identity: the loss of the mapped teacher and of a token-shuffled copy of it.

    python benchmarks/llm_vocab.py [chunks]     # 50 chunks of 512 characters; writes results/llm_vocab.json
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from kdforge.data.austen import austen_novels
from kdforge.llm.assets import gemma_folder, smollm2_folder
from kdforge.lm.cross_tokenizer import (
    align_text,
    cross_tokenizer_signal,
    encode_with_offsets,
    map_rows,
    uld_rows,
)
from kdforge.lm.vocab import compare_vocabularies, token_map

from common import save

CHARS, BATCH, K, START = 512, 8, 64, 20_000  # chunks start past the title pages
SAMPLE = 48  # aligned rows per batch re-scored for the top-1 and ULD checks
CHOICE = (
    "Direct mapping of shared tokens at aligned positions (consumed by the sparse KL/JSD kernels); the st"
    "udent positions that do not align get no teacher target (the run's CE term still covers them). The d"
    "irect map covers most positions and keeps almost all of the teacher's mass with its token identity ("
    "mapped top-1 accuracy close to the teacher's own); ULD scores a token-shuffled copy of the teacher e"
    "xactly as well as the teacher itself, so neither alone nor on the unaligned rest (GOLD's hybrid) can"
    " it teach which token comes next, and the paper's index pairing compares different prefixes most of "
    "the time."
)


@dataclass(frozen=True)
class HeadRows:
    """Last hidden states + LM head: teacher logits made only for the rows asked for (no (B, S, 262k) tensor)."""

    hidden: Tensor
    weight: Tensor

    def select(self, index: Any) -> HeadRows:
        return replace(self, hidden=self.hidden[index])

    def logits(self, start: int, end: int) -> Tensor:
        return torch.nn.functional.linear(self.hidden[start:end], self.weight).float()


def chunks(n: int) -> list[str]:
    """``n`` consecutive 512-character pieces of the held-out book."""
    book = austen_novels()["persuasion"]
    return [book[START + i * CHARS : START + (i + 1) * CHARS] for i in range(n)]


def prefix_ends(offsets: list[tuple[int, int]]) -> list[int]:
    return [end for start, end in offsets if end > start]


def main() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    n_chunks = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    began = time.perf_counter()
    g_dir, s_dir = gemma_folder(), smollm2_folder()
    gemma_tok, smol_tok = AutoTokenizer.from_pretrained(str(g_dir)), AutoTokenizer.from_pretrained(str(s_dir))
    teacher = AutoModelForCausalLM.from_pretrained(str(g_dir), dtype=torch.float32).eval()
    t_rows = teacher.get_output_embeddings().weight.shape[0]
    s_rows = int(AutoConfig.from_pretrained(str(s_dir)).vocab_size)  # the student's LM head rows
    assert getattr(teacher.config, "final_logit_softcapping", None) is None  # HeadRows applies no soft-capping
    down = compare_vocabularies(gemma_tok, smol_tok, t_rows, s_rows)
    up = compare_vocabularies(smol_tok, gemma_tok, s_rows, t_rows)
    tmap = token_map(gemma_tok, smol_tok, t_rows)
    # TRL's GOLD matches tokens by exact spelling; '▁the' and 'Ġthe' then count as different tokens.
    spelled = len(gemma_tok.get_vocab().keys() & smol_tok.get_vocab().keys())
    load_before = os.getloadavg()
    setup_s = time.perf_counter() - began

    texts = chunks(n_chunks)
    dropped: list[Tensor] = []
    counts = {"student_positions": 0, "aligned": 0, "rest": 0, "index_paired": 0, "index_paired_same_prefix": 0}
    hits = {"rows": 0, "mapped_top1_is_student_next": 0, "teacher_top1_is_teacher_next": 0}
    uld = {"mapped": [], "shuffled": [], "kl_shuffled": []}
    forward_s = map_s = 0.0
    gen = torch.Generator().manual_seed(0)
    for b0 in range(0, len(texts), BATCH):
        batch = texts[b0 : b0 + BATCH]
        pairs = [align_text(t, gemma_tok, smol_tok) for t in batch]
        enc = gemma_tok(batch, return_tensors="pt", padding=True)  # Gemma pads on the left
        t0 = time.perf_counter()
        with torch.inference_mode():
            hidden = teacher.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
        forward_s += time.perf_counter() - t0
        head = HeadRows(hidden, teacher.get_output_embeddings().weight.detach())
        s_len = max(len(p.student_ids) for p in pairs)
        t0 = time.perf_counter()
        with torch.inference_mode():
            cross = cross_tokenizer_signal(
                head, [p.alignment for p in pairs], tmap, s_rows, s_len, k=K, teacher_mask=enc.attention_mask
            )
        map_s += time.perf_counter() - t0
        dropped.append(cross.dropped[cross.mask])
        counts["student_positions"] += sum(len(p.student_ids) for p in pairs)
        counts["aligned"] += int(cross.mask.sum())
        counts["rest"] += int(cross.rest.sum())

        for text in batch:  # the paper's ULD pairs positions by index (first text token with first text token)
            t_ends = prefix_ends(encode_with_offsets(gemma_tok, text)[1])
            s_ends = prefix_ends(encode_with_offsets(smol_tok, text)[1])
            n = min(len(s_ends), len(t_ends))
            counts["index_paired"] += n
            counts["index_paired_same_prefix"] += sum(s_ends[j] == t_ends[j] for j in range(n))

        # Re-score a sample of aligned rows that have a next token: does the mapped target still name it?
        lead = enc.attention_mask.long().argmax(-1)
        rows = [
            (b, j)
            for b, p in enumerate(pairs)
            for j in p.alignment.aligned.nonzero().squeeze(-1).tolist()
            if j + 1 < len(p.student_ids) and bool(cross.mask[b, j])
        ]
        pick = torch.randperm(len(rows), generator=gen)[:SAMPLE].tolist()
        bs = torch.tensor([rows[i][0] for i in pick])
        js = torch.tensor([rows[i][1] for i in pick])
        ts = torch.stack([pairs[b].alignment.teacher_index[j] for b, j in zip(bs.tolist(), js.tolist(), strict=True)])
        with torch.inference_mode():
            t_logp = torch.log_softmax(torch.nn.functional.linear(hidden[bs, ts + lead[bs]], head.weight).float(), -1)
            sig, _ = map_rows(t_logp, tmap, s_rows, K)
            s_next = torch.tensor([pairs[b].student_ids[j + 1] for b, j in zip(bs.tolist(), js.tolist(), strict=True)])
            t_next = torch.tensor(
                [pairs[b].teacher_ids[t + 1] if t + 1 < len(pairs[b].teacher_ids) else -1
                 for b, t in zip(bs.tolist(), ts.tolist(), strict=True)]
            )  # fmt: skip
            hits["rows"] += len(pick)
            hits["mapped_top1_is_student_next"] += int((sig.ids[:, 0] == s_next).sum())
            hits["teacher_top1_is_teacher_next"] += int((t_logp.argmax(-1) == t_next).sum())
            mapped = sig.to_dense_logprobs()
            shuffled = mapped[:, torch.randperm(s_rows, generator=gen)]
            uld["mapped"].append(uld_rows(mapped, t_logp))
            uld["shuffled"].append(uld_rows(shuffled, t_logp))
            uld["kl_shuffled"].append((mapped.exp() * (mapped - shuffled)).sum(-1))
        print(f"{b0 + len(batch)}/{len(texts)} chunks, {time.perf_counter() - began:.0f} s", flush=True)

    drop = torch.cat(dropped)
    q = torch.quantile(drop, torch.tensor([0.5, 0.9, 0.99])).tolist()
    total = counts["student_positions"]
    result = {
        "command": "python benchmarks/llm_vocab.py" + (f" {n_chunks}" if n_chunks != 50 else ""),
        "setup": {
            "teacher": "Gemma-3-270M (base, fp32 folder converted from the Q4_K_M GGUF)",
            "student_tokenizer": "SmolLM2-135M-Instruct",
            "text": f"persuasion, {n_chunks} consecutive chunks of {CHARS} characters from character {START}",
            "top_k": K,
            "batch": BATCH,
        },
        "vocab": {
            "gemma_teacher_smollm2_student": down.to_json(),
            "smollm2_teacher_gemma_student": up.to_json(),
            "shared_by_exact_spelling": spelled,
        },
        "positions": {
            **counts,
            "aligned_fraction": counts["aligned"] / total,
            "rest_fraction": counts["rest"] / total,
            "unpaired_fraction": 1 - (counts["aligned"] + counts["rest"]) / total,
            "index_paired_same_prefix_fraction": counts["index_paired_same_prefix"] / max(1, counts["index_paired"]),
        },
        "dropped_teacher_mass_at_aligned": {
            "mean": float(drop.mean()),
            "median": q[0],
            "p90": q[1],
            "p99": q[2],
            "fraction_of_positions_over_0.5": float((drop > 0.5).float().mean()),
            "kept_mean": float(1 - drop.mean()),
        },
        "token_identity": {
            **hits,
            "mapped_top1_accuracy": hits["mapped_top1_is_student_next"] / max(1, hits["rows"]),
            "teacher_top1_accuracy": hits["teacher_top1_is_teacher_next"] / max(1, hits["rows"]),
        },
        "uld_blindness": {
            "rows": hits["rows"],
            "uld_mapped_teacher_as_student": float(torch.cat(uld["mapped"]).mean()),
            "uld_token_shuffled_copy": float(torch.cat(uld["shuffled"]).mean()),
            "kl_mapped_vs_shuffled": float(torch.cat(uld["kl_shuffled"]).mean()),
        },
        "seconds": {
            "setup": round(setup_s, 1),
            "teacher_forward": round(forward_s, 1),
            "map": round(map_s, 1),
            "total": round(time.perf_counter() - began, 1),
            "load_average_1min_before_and_after": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
        },
        "choice": CHOICE,
    }
    save("llm_vocab", result, merge_key=None)
    print(result["positions"], result["dropped_teacher_mass_at_aligned"], result["token_identity"], sep="\n")
    print(result["uld_blindness"], result["seconds"], sep="\n")


if __name__ == "__main__":
    main()
