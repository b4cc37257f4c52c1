"""Peak memory of the sparse top-k loss kernels against the dense path, at a language-model vocabulary.

Forward + backward of each loss on 256 token rows of a 49,152-word vocabulary (SmolLM2's) with a top-64 teacher
signal; peak live tensor bytes counted with kdforge.evaluate.memory (CPU allocations are invisible to tracemalloc).
The dense path is the objective on the signal's (tokens × vocabulary) reconstruction; the baseline is what the
student alone costs (its log-softmax and entropy). Writes benchmarks/results/sparse_memory.json.
Usage: python benchmarks/sparse_memory.py
"""

from __future__ import annotations

import torch
from torch import Tensor

import kdforge
from kdforge.evaluate.memory import peak_backward_bytes
from kdforge.signals import SparseSignal

from common import save

N, V, K, T = 256, 49_152, 64, 2.0


def signal() -> tuple[Tensor, SparseSignal]:
    """Student logits and a top-k teacher signal (distinct ids per row, top-k mass 0.4–0.9)."""
    g = torch.Generator().manual_seed(4)
    s = torch.randn(N, V, generator=g).requires_grad_(True)
    ids = (torch.arange(N)[:, None] * 7 + torch.arange(K) * 701) % V
    kept = 0.4 + 0.5 * torch.rand(N, generator=g)
    logprobs = torch.log_softmax(torch.randn(N, K, generator=g) * 2, dim=-1) + kept.log()[:, None]
    return s, SparseSignal(ids=ids, logprobs=logprobs, tail=torch.log1p(-kept), vocab_size=V)


def main() -> None:
    s, sig = signal()
    inputs = (sig.ids, sig.logprobs, sig.tail)

    def baseline(x: Tensor) -> Tensor:
        log_q = torch.log_softmax(x / T, dim=-1)
        return (log_q.exp() * log_q).sum(-1).mean()

    mb = 2.0**20
    peaks = {"student_only": peak_backward_bytes(baseline, s, *inputs) / mb}
    for name, params in (("kd", {"T": T}), ("jsd", {"beta": 0.5, "T": T}), ("reverse_kl", {"T": T})):
        obj = kdforge.objective(name, **params)
        peaks[f"{name}_sparse"] = peak_backward_bytes(lambda x, o=obj: o(x, sig), s, *inputs) / mb
        # The dense path builds the (tokens × vocabulary) reconstruction itself: it is counted.
        peaks[f"{name}_dense"] = peak_backward_bytes(lambda x, o=obj: o(x, sig.to_dense_logits()), s, *inputs) / mb
    result = {"tokens": N, "vocab": V, "k": K, "T": T, "one_tokens_x_vocab_mb": N * V * 4 / mb, "peak_mb": peaks}
    print({k: round(v, 1) for k, v in peaks.items()})
    save("sparse_memory", result, merge_key=None)


if __name__ == "__main__":
    main()
