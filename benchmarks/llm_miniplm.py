"""MiniPLM on Jane Austen: students trained on the Difference-Sampled part of a pool vs as many random documents.

Documents are ~128-token (SmolLM2) chunks of five novels; Persuasion is held out for perplexity. Teacher:
SmolLM2-135M-Instruct (fp32). Reference: a tiny Llama on the SmolLM2 tokenizer, trained from scratch on a disjoint
slice of the same novels (the paper's recipe: a small LM on a small part of the corpus). Score = mean teacher log-prob
per token − mean reference log-prob per token (kdforge.lm.miniplm). Students: a ~2.6M-parameter Llama on a 4,096-token
BPE learnt from the five novels (so scoring and student tokenizers differ), plain next-token CE, the same steps and
tokens for every arm; a third arm trains on the bottom fraction (does the ordering matter at all?). The reference
model, both models' scores (per document) and every finished student are cached under ~/.cache/kdforge/bench/miniplm,
so a stopped run resumes and a re-run only trains what is missing (e.g. ``--seeds 0 1 2`` adds one seed).

    .venv/bin/python benchmarks/llm_miniplm.py     # ~30 min on 2 idle cores (estimate); see "seconds" in the JSON
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from kdforge.data.austen import austen_novels
from kdforge.llm.assets import smollm2_folder
from kdforge.lm.miniplm import DocScore, select, sequence_logprobs, summarize

from common import mean_std, save

HELD_OUT = "persuasion"
BLOCK = 128  # tokens per training block and per document
EOT = "<|endoftext|>"
STUDENT = (192, 4, 6)  # hidden, layers, heads: ~2.6M parameters with the 4,096-token BPE
REF_START = 1280  # shuffled documents before this index may be pooled; the reference LM learns from those after


def log(message: str) -> None:
    """Progress on stdout, with the wall time since start."""
    print(f"[{time.time() - START:7.1f}s] {message}", flush=True)


def cache_dir() -> Path:
    """Where scores and the reference model are kept between runs."""
    folder = Path(os.environ.get("KDFORGE_BENCH_WORK", "~/.cache/kdforge/bench")).expanduser() / "miniplm"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def digest(*parts: Any) -> str:
    """A short hash of JSON-able parts, to key cache files."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def chunk(tokenizer: Any, text: str) -> list[str]:
    """A novel cut into consecutive BLOCK-token pieces, decoded back to text (the last partial piece dropped)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(ids[i : i + BLOCK]) for i in range(0, len(ids) - BLOCK + 1, BLOCK)]


def blocks(docs_ids: list[list[int]], eos: int) -> torch.Tensor:
    """Documents joined with an end-of-text id and cut into (N, BLOCK) training blocks."""
    stream = [t for ids in docs_ids for t in [*ids, eos]]
    n = len(stream) // BLOCK
    return torch.tensor(stream[: n * BLOCK]).view(n, BLOCK)


def llama(vocab: int, hidden: int, layers: int, heads: int, seed: int) -> LlamaForCausalLM:
    """A small Llama from scratch with tied embeddings."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2 * BLOCK,
        tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def train_lm(model: torch.nn.Module, data: torch.Tensor, steps: int, batch: int, lr: float, seed: int,
             on_eval: Any = None, eval_every: int = 0) -> float:  # fmt: skip
    """Plain next-token CE with AdamW, linear warm-up then cosine decay; epochs are seeded shuffles of ``data``."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, steps // 20)

    def factor(s: int) -> float:
        return (s + 1) / warm if s < warm else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    order, pos, start = torch.randperm(len(data), generator=gen), 0, time.time()
    model.train()
    for step in range(steps):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(data), generator=gen), 0
        x = data[order[pos : pos + batch]]
        pos += batch
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if on_eval is not None and eval_every and (step + 1) % eval_every == 0:
            model.eval()
            on_eval(step + 1, loss.item())
            model.train()
    model.eval()
    return time.time() - start


@torch.inference_mode()
def perplexity(model: torch.nn.Module, data: torch.Tensor, batch: int = 32) -> float:
    """exp(mean next-token NLL) over every predicted token of ``data`` (N, BLOCK)."""
    total, count = 0.0, 0
    for i in range(0, len(data), batch):
        x = data[i : i + batch]
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum")
        total, count = total + nll.item(), count + x[:, 1:].numel()
    return math.exp(total / count)


def cached_logprobs(name: str, texts: list[str], model: Any, ids: list[list[int]], batch: int) -> tuple[list, float]:
    """(Σ log p, tokens) of each text and the seconds they took; cached per text, saved every 16 batches."""
    path = cache_dir() / f"logprobs-{name}.json"
    cache: dict[str, list[float]] = json.loads(path.read_text()) if path.is_file() else {}  # digest: [lp, n, s]
    keys = [digest(t) for t in texts]
    todo = [i for i, k in enumerate(keys) if k not in cache]
    for start in range(0, len(todo), 16 * batch):
        t0, part = time.time(), todo[start : start + 16 * batch]
        results = sequence_logprobs(model, [ids[i] for i in part], batch, 2 * BLOCK)
        share = (time.time() - t0) / len(part)
        for i, (lp, n) in zip(part, results, strict=True):
            cache[keys[i]] = [lp, n, share]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(path)
        log(f"{name}: scored {start + len(part)}/{len(todo)} new documents ({share * len(part):.1f}s for {len(part)})")
    return [(float(cache[k][0]), int(cache[k][1])) for k in keys], sum(cache[k][2] for k in keys)


def student_tokenizer(texts: list[str], vocab: int) -> Any:
    """A byte-level BPE learnt from the training novels (never from the held-out one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def kept_indices(arm: str, scores: list[DocScore], fraction: float, seed: int) -> list[int]:
    """The documents one arm trains on."""
    if arm == "difference":
        return select(scores, fraction)
    if arm == "random":  # a different draw per seed, so the seeds also sample the baseline's subset
        return select(scores, fraction, "random", seed=seed)
    if arm == "bottom":  # the lowest scores: a check that the ordering matters at all
        return select([-s.score for s in scores], fraction)
    return list(range(len(scores)))  # "all": the whole pool


def reference_lm(smol: Any, ref_texts: list[str], steps: int) -> tuple[LlamaForCausalLM, str, dict[str, Any]]:
    """The small reference LM, trained on ``ref_texts`` once and cached; (model, cache key, facts)."""
    key = digest(ref_texts, steps, "ref-v1")
    path = cache_dir() / f"reference-{key}.pt"
    model = llama(len(smol), 64, 2, 4, seed=0)
    info: dict[str, Any] = {"params": sum(q.numel() for q in model.parameters()), "steps": steps, "batch": 8}
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        info["train_s"] = json.loads(path.with_suffix(".json").read_text())["train_s"]
    else:
        ids = [smol(t, add_special_tokens=False)["input_ids"] for t in ref_texts]
        info["train_s"] = round(train_lm(model, blocks(ids, smol.convert_tokens_to_ids(EOT)), steps, 8, 3e-3, 0), 1)
        torch.save(model.state_dict(), path)
        path.with_suffix(".json").write_text(json.dumps(info))
        log(f"reference trained: {steps} steps in {info['train_s']:.0f}s")
    return model.eval(), key, info


def run_student(arm: str, seed: int, args: argparse.Namespace, scores: list[DocScore], bpe_ids: list[list[int]],
                vocab: int, eos: int, test: torch.Tensor) -> dict[str, Any]:  # fmt: skip
    """Train one student on the arm's documents; its held-out perplexity curve."""
    kept = kept_indices(arm, scores, args.fraction, seed)
    student = llama(vocab, *STUDENT, seed=seed)
    curve: list[dict[str, float]] = []

    def on_eval(step: int, loss: float) -> None:
        curve.append({"step": step, "train_loss": round(loss, 4), "test_ppl": round(perplexity(student, test), 3)})

    data = blocks([bpe_ids[i] for i in kept], eos)
    train_s = train_lm(student, data, args.steps, 16, 2e-3, seed, on_eval, eval_every=max(1, args.steps // 4))
    best = min(c["test_ppl"] for c in curve)
    log(f"{arm} seed {seed}: ppl {curve[-1]['test_ppl']:.2f} (best {best:.2f}), {train_s:.0f}s")
    return {"seed": seed, "final_ppl": curve[-1]["test_ppl"], "best_ppl": best, "train_s": round(train_s, 1),
            "epochs": round(args.steps * 16 / len(data), 2), "curve": curve}  # fmt: skip


def arm_record(arm: str, runs: list[dict[str, Any]], args: argparse.Namespace, scores: list[DocScore],
               bpe_ids: list[list[int]]) -> dict[str, Any]:  # fmt: skip
    """What an arm trained on (for "random": the first seed's draw) and its perplexities over seeds."""
    kept = kept_indices(arm, scores, args.fraction, runs[0]["seed"])
    stats = summarize(scores, kept)
    return {
        "documents": len(kept),
        "unique_student_tokens": sum(len(bpe_ids[i]) + 1 for i in kept),
        "teacher_tokens": stats["teacher_tokens_kept"],
        "mean_score": stats["mean_score_kept"],
        "mean_teacher_logprob_per_token": stats["mean_teacher_logprob_per_token_kept"],
        "mean_reference_logprob_per_token": stats["mean_reference_logprob_per_token_kept"],
        "final_ppl": mean_std([r["final_ppl"] for r in runs]),
        "best_ppl": mean_std([r["best_ppl"] for r in runs]),
        "runs": runs,
    }


def evenly(data: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows spread evenly over ``data`` (the whole held-out novel, not just its opening)."""
    return data[torch.linspace(0, len(data) - 1, min(n, len(data))).long()]


def parse() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", type=int, default=1280, help="documents scored by the teacher")
    p.add_argument("--fraction", type=float, default=0.5, help="the paper's selection ratio alpha")
    p.add_argument("--ref-docs", type=int, default=2400, help="documents the reference LM is trained on")
    p.add_argument("--ref-steps", type=int, default=200)
    p.add_argument("--steps", type=int, default=160, help="student optimiser steps (batch 16 x 128 tokens)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--arms", nargs="+", default=["difference", "random", "bottom"])
    p.add_argument("--eval-blocks", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def documents(smol: Any, novels: dict[str, str], args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(pool, reference slice): shuffled, disjoint ~128-token documents of the training novels."""
    if args.pool > REF_START:
        raise SystemExit(f"--pool {args.pool} is more than {REF_START}, where the reference LM's slice begins")
    docs = [d for name, text in novels.items() if name != HELD_OUT for d in chunk(smol, text)]
    random.Random(0).shuffle(docs)
    log(f"{len(docs)} training documents")
    return docs[: args.pool], docs[REF_START : REF_START + args.ref_docs]


def pool_scores(folder: Path, smol: Any, pool: list[str], reference: Any, ref_key: str) -> tuple[list, dict]:
    """Teacher and reference log-likelihoods of the pool (cached per document), and the seconds scoring took."""
    pool_ids = [smol(t)["input_ids"] for t in pool]
    ref_lp, ref_s = cached_logprobs(f"reference-{ref_key}", pool, reference, pool_ids, 16)
    teacher = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
    teacher_lp, teacher_s = cached_logprobs("teacher-smollm2-135m", pool, teacher, pool_ids, 8)
    scores = [DocScore(t, n, r, m) for (t, n), (r, m) in zip(teacher_lp, ref_lp, strict=True)]
    return scores, {"teacher_scoring": round(teacher_s, 1), "reference_scoring": round(ref_s, 1)}


def main() -> None:
    """Score the pool, select, train the students, write benchmarks/results/llm_miniplm.json."""
    args = parse()
    torch.set_num_threads(args.threads)
    novels = austen_novels()
    folder = smollm2_folder()
    smol = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    pool, ref_texts = documents(smol, novels, args)
    reference, ref_key, ref_info = reference_lm(smol, ref_texts, args.ref_steps)
    smol_test = blocks([smol(novels[HELD_OUT], add_special_tokens=False)["input_ids"]], smol.convert_tokens_to_ids(EOT))
    ref_info["test_ppl_smollm2_tokens"] = round(perplexity(reference, evenly(smol_test, args.eval_blocks), 8), 2)
    log(f"reference perplexity on {HELD_OUT}: {ref_info['test_ppl_smollm2_tokens']}")
    scores, seconds = pool_scores(folder, smol, pool, reference, ref_key)

    bpe = student_tokenizer([t for name, t in novels.items() if name != HELD_OUT], 4096)
    eos, vocab = bpe.token_to_id(EOT), bpe.get_vocab_size()
    test = evenly(blocks([bpe.encode(novels[HELD_OUT]).ids], eos), args.eval_blocks)
    bpe_ids = [e.ids for e in bpe.encode_batch(pool)]
    ranked = sorted(range(len(pool)), key=lambda i: -scores[i].score)
    student = {"arch": f"Llama {STUDENT[1]}x{STUDENT[0]}, 4096-token BPE", "steps": args.steps, "batch": 16,
               "block": BLOCK, "tokens_per_arm": args.steps * 16 * BLOCK, "lr": 2e-3,
               "params": sum(q.numel() for q in llama(vocab, *STUDENT, seed=0).parameters())}  # fmt: skip
    facts = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "score": "mean log p_teacher per token - mean log p_ref per token (as the official MiniPLM code)",
        "teacher": "SmolLM2-135M-Instruct fp32",
        "reference": {"arch": "Llama 2x64, SmolLM2 tokenizer", "train_documents": len(ref_texts), **ref_info},
        "pool": len(pool),
        "fraction": args.fraction,
        "kept_documents": len(select(scores, args.fraction)),
        "student": student,
        "held_out": {"novel": HELD_OUT, "blocks": len(test), "tokens": len(test) * (BLOCK - 1)},
        "seeds": args.seeds,
        "examples": {"top": [pool[i][:160] for i in ranked[:3]], "bottom": [pool[i][:160] for i in ranked[-3:]]},
    }
    # Finished students are cached too; seeds run outermost, so a stopped run has every arm at the same seeds.
    runs_path = cache_dir() / f"students-{digest(pool, ref_key, args.fraction, student, args.eval_blocks)}.json"
    done: dict[str, dict[str, Any]] = json.loads(runs_path.read_text()) if runs_path.is_file() else {}
    wanted = [f"{arm}/{seed}" for seed in args.seeds for arm in args.arms]
    for key in wanted:
        if key not in done:
            arm, seed = key.split("/")
            done[key] = run_student(arm, int(seed), args, scores, bpe_ids, vocab, eos, test)
            runs_path.write_text(json.dumps(done))
        arms = {}
        for arm in args.arms:
            if runs := [done[f"{arm}/{seed}"] for seed in args.seeds if f"{arm}/{seed}" in done]:
                arms[arm] = arm_record(arm, runs, args, scores, bpe_ids)
        payload = {
            **facts,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "arms": arms,
            "complete": all(k in done for k in wanted),
            "seconds": {  # summed over the invocations that filled the caches
                "reference_training": ref_info["train_s"],
                **seconds,
                "students": round(sum(r["train_s"] for a in arms.values() for r in a["runs"]), 1),
                "this_invocation": round(time.time() - START, 1),
            },
            "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],  # the machine is shared
        }
        save("llm_miniplm", payload, merge_key=None)
    log("saved benchmarks/results/llm_miniplm.json")


START = time.time()
if __name__ == "__main__":
    main()
