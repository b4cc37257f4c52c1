"""Parity fixtures for the objectives with built modules (vid, crd, reviewkd) from the reference implementations.

Reads the loss code out of an mdistiller checkout (mdistiller/distillers/VID.py: vid_loss; ReviewKD.py: ABF, hcl_loss
and the fusion loop of ReviewKD.forward_train), a RepDistiller checkout (crd/criterion.py: Embed, Normalize,
ContrastLoss; crd/memory.py: ContrastMemory) and a torchdistill checkout (torchdistill/losses/mid_level.py: VIDLoss,
CRDLoss, HierarchicalContextLoss), runs it on fixed seeded tensors and writes tests/data/parity/{vid,crd,reviewkd}.json.
torchdistill's value of each is checked to agree with the fixture's source before it is written. Only the named
classes and functions are taken from each file (their package imports are not run): nothing outside this venv and the
checkouts is needed. CRD is fed the negatives directly (``contrast_idx``): the reference's AliasMethod sampler is
replaced by a stub, since it moves itself to CUDA on construction and would draw other rows than ours anyway.

Usage: python benchmarks/parity/modules.py MDISTILLER_CHECKOUT REPDISTILLER_CHECKOUT TORCHDISTILL_CHECKOUT [OUT_DIR]
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lift import agree, arguments, commit, load, nested, write


class NoSampler:
    """Stands in for the reference's AliasMethod: the fixture gives the negatives, nothing is drawn."""

    def __init__(self, probs: torch.Tensor):
        self.size = len(probs)

    def cuda(self) -> None:
        """No device move (the reference moves its tables to CUDA)."""

    def draw(self, n: int) -> torch.Tensor:
        """Never called: every forward gets ``contrast_idx``."""
        raise RuntimeError("the parity fixture passes contrast_idx; nothing should be drawn")


REFERENCE_GLOBALS: dict[str, Any] = {
    "AliasMethod": NoSampler,
    "Distiller": nn.Module,  # mdistiller's base class: only the loss code of its subclasses is used
    "_extract_feature_map": lambda io_dict, key: io_dict[key],  # torchdistill's VIDLoss: pairs name io keys
    "logger": logging.getLogger("parity"),
    "eps": 1e-7,  # RepDistiller's crd/criterion.py module constant
}


def vid_fixture(mdistiller: Path, torchdistill: Path) -> dict[str, Any]:
    """Two pairs through mdistiller's vid_loss: one pools the student map, one the teacher's."""
    md = load(mdistiller / "mdistiller/distillers/VID.py", ["conv1x1", "vid_loss", "VID"], REFERENCE_GLOBALS)
    td = load(torchdistill / "torchdistill/losses/mid_level.py", ["VIDLoss"], REFERENCE_GLOBALS)
    eps, init_pred_var = 1e-5, 5.0
    torch.manual_seed(0)
    shapes = [((2, 4, 8, 8), (2, 6, 4, 4)), ((2, 8, 2, 2), (2, 6, 4, 4))]
    vid = md["VID"].__new__(md["VID"])
    nn.Module.__init__(vid)
    vid.init_pred_var, vid.eps = init_pred_var, eps
    vid.init_vid_modules([s[1] for s, _ in shapes], [t[1] for _, t in shapes])  # the reference's own heads
    inputs: dict[str, Any] = {}
    total, td_total = 0.0, 0.0
    for i, (s_shape, t_shape) in enumerate(shapes):
        f_s, f_t = torch.randn(*s_shape), torch.randn(*t_shape)
        regressor, log_scale = vid.regressors[i], vid.log_scales[i]
        with torch.no_grad():
            log_scale.add_(0.5 * torch.randn_like(log_scale))  # a trained α, not only the initial value
        total += md["vid_loss"](regressor, log_scale, f_s, f_t, eps).item()
        # torchdistill: the same Gaussian from its wrapper's (pred_mean, pred_var) after the same pooling.
        s_in, t_in = f_s, f_t
        if s_shape[2] > t_shape[2]:
            s_in = F.adaptive_avg_pool2d(f_s, t_shape[2:])
        elif s_shape[2] < t_shape[2]:
            t_in = F.adaptive_avg_pool2d(f_t, s_shape[2:])
        pred_var = (torch.log(1.0 + torch.exp(log_scale)) + eps).view(1, -1, 1, 1)
        pairs = {"p": {"student": "s", "teacher": "t"}}
        td_total += td["VIDLoss"](pairs)({"s": (regressor(s_in), pred_var)}, {"t": t_in}).item()
        inputs[f"student_{i}"], inputs[f"teacher_{i}"] = nested(f_s), nested(f_t)
        for key, value in regressor.state_dict().items():
            inputs[f"head_{i}.regressor.{key}"] = nested(value)
        inputs[f"head_{i}.log_scale"] = nested(log_scale)
    agree(total, td_total, "vid: mdistiller vs torchdistill")
    return {
        "source": {"repo": "megvii-research/mdistiller", "path": "mdistiller/distillers/VID.py"},
        "params": {"eps": eps, "init_pred_var": init_pred_var, "mid_channels": 0},
        "inputs": inputs,
        "value": total,
    }


def crd_fixture(repdistiller: Path, torchdistill: Path) -> dict[str, Any]:
    """Two batches through RepDistiller's CRDLoss: the first sets Z, the second sees the updated banks."""
    rd = {
        **load(repdistiller / "crd/criterion.py", ["CRDLoss", "ContrastLoss", "Embed", "Normalize"], REFERENCE_GLOBALS),
        **load(repdistiller / "crd/memory.py", ["ContrastMemory"], REFERENCE_GLOBALS),
    }
    rd["CRDLoss"].forward.__globals__["ContrastMemory"] = rd["ContrastMemory"]
    td = load(torchdistill / "torchdistill/losses/mid_level.py", ["CRDLoss"], REFERENCE_GLOBALS)
    params = {"feat_dim": 8, "nce_k": 5, "nce_t": 0.07, "momentum": 0.5, "eps": 1e-7}
    n_data, batch = 24, 4
    opt = type("Opt", (), {"s_dim": 12, "t_dim": 10, "feat_dim": 8, "nce_k": 5, "nce_t": 0.07, "nce_m": 0.5})()
    opt.n_data = n_data
    torch.manual_seed(1)
    crd = rd["CRDLoss"](opt)
    inputs: dict[str, Any] = {
        "embed_s.weight": nested(crd.embed_s.linear.weight),
        "embed_s.bias": nested(crd.embed_s.linear.bias),
        "embed_t.weight": nested(crd.embed_t.linear.weight),
        "embed_t.bias": nested(crd.embed_t.linear.bias),
        "memory_s": nested(crd.contrast.memory_v1),
        "memory_t": nested(crd.contrast.memory_v2),
    }
    # torchdistill's CRDLoss on the same embeddings and banks (its __init__ builds an alias table it does not need).
    td_crd = td["CRDLoss"].__new__(td["CRDLoss"])
    nn.Module.__init__(td_crd)
    td_crd.eps, td_crd.num_samples, td_crd.num_negative_samples = 1e-7, n_data, 5
    td_crd.register_buffer("params", torch.tensor([5, 0.07, -1, -1, 0.5]))
    td_crd.register_buffer("memory_v1", crd.contrast.memory_v1.clone())
    td_crd.register_buffer("memory_v2", crd.contrast.memory_v2.clone())
    values = []
    for step in range(2):
        f_s, f_t = torch.randn(batch, 3, 2, 2), torch.randn(batch, 10)
        index = torch.randperm(n_data)[:batch]
        negatives = torch.stack([torch.randint(0, n_data - 1, (5,)) for _ in range(batch)])
        negatives = negatives + (negatives >= index[:, None]).long()  # other rows than the sample's own, as ours
        contrast_idx = torch.cat([index[:, None], negatives], dim=1)  # the positive first, as the data loader gives
        v_s, v_t = crd.embed_s(f_s), crd.embed_t(f_t)
        td_out = td_crd.contrast_memory(v_s.detach(), v_t.detach(), index, contrast_idx)
        td_value = float(td_crd.compute_contrast_loss(td_out[0]) + td_crd.compute_contrast_loss(td_out[1]))
        values.append(crd(f_s, f_t, index, contrast_idx).item())
        agree(values[-1], td_value, f"crd step {step}: RepDistiller vs torchdistill")
        suffix = "" if step == 0 else "_2"
        for name, value in [("student", f_s), ("teacher", f_t), ("index", index), ("negatives", negatives)]:
            inputs[name + suffix] = nested(value)
    return {
        "source": {"repo": "HobbitLong/RepDistiller", "path": "crd/criterion.py, crd/memory.py"},
        "params": {**params, "n_data": n_data},
        "inputs": inputs,
        "value": values[0],
        "value_2": values[1],  # the second batch: frozen Z, banks after the first update
    }


def reviewkd_fixture(mdistiller: Path, torchdistill: Path) -> dict[str, Any]:
    """Three levels (a map, a smaller map the teacher has at twice the size, the pooled features) through ReviewKD."""
    md = load(mdistiller / "mdistiller/distillers/ReviewKD.py", ["ABF", "hcl_loss"], REFERENCE_GLOBALS)
    td = load(torchdistill / "torchdistill/losses/mid_level.py", ["HierarchicalContextLoss"], REFERENCE_GLOBALS)
    torch.manual_seed(2)
    student = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4), torch.randn(2, 8)]
    teacher = [torch.randn(2, 6, 8, 8), torch.randn(2, 6, 8, 8), torch.randn(2, 6)]
    in_channels, out_channels = [4, 8, 8], [6, 6, 6]
    mid_channel = min(512, in_channels[-1])
    abfs = nn.ModuleList(
        md["ABF"](c, mid_channel, out_channels[i], i < len(in_channels) - 1) for i, c in enumerate(in_channels)
    )
    with torch.no_grad():
        for p in abfs.parameters():
            p.add_(0.1 * torch.randn_like(p))  # trained-looking BN affine and attention weights
    inputs: dict[str, Any] = {}
    for i, abf in enumerate(abfs):
        for key, value in abf.state_dict().items():
            inputs[f"abf_{i}.{key}"] = nested(value)
    for i, (s, t) in enumerate(zip(student, teacher, strict=True)):
        inputs[f"student_{i}"], inputs[f"teacher_{i}"] = nested(s), nested(t)
    # mdistiller's ReviewKD.forward_train from its features on: pooled features as 1×1 maps, deep to shallow.
    shapes, out_shapes = [1, 4, 8], [1, 8, 8]
    x = [*student[:2], student[2].unsqueeze(-1).unsqueeze(-1)][::-1]
    ordered = abfs[::-1]
    results = []
    out_features, res_features = ordered[0](x[0], out_shape=out_shapes[0])
    results.append(out_features)
    for features, abf, shape, out_shape in zip(x[1:], ordered[1:], shapes[1:], out_shapes[1:], strict=True):
        out_features, res_features = abf(features, res_features, shape, out_shape)
        results.insert(0, out_features)
    features_teacher = [*teacher[:2], teacher[2].unsqueeze(-1).unsqueeze(-1)]
    value = md["hcl_loss"](results, features_teacher).item()
    hcl = td["HierarchicalContextLoss"]("s", "output", "t", "output")
    td_value = sum(
        hcl({"s": {"output": (s, None)}}, {"t": {"output": t}}).item()
        for s, t in zip(results, features_teacher, strict=True)
    )
    agree(value, td_value, "reviewkd hcl: mdistiller vs torchdistill")
    return {
        "source": {"repo": "megvii-research/mdistiller", "path": "mdistiller/distillers/ReviewKD.py"},
        "params": {"max_mid_channels": 512, "pyramid": [4, 2, 1]},
        "inputs": inputs,
        "value": value,
    }


def main() -> None:
    """Write the three fixtures."""
    (mdistiller, repdistiller, torchdistill), out = arguments(sys.argv[1:], 3, __doc__)
    made = {
        "vid": (vid_fixture(mdistiller, torchdistill), mdistiller),
        "crd": (crd_fixture(repdistiller, torchdistill), repdistiller),
        "reviewkd": (reviewkd_fixture(mdistiller, torchdistill), mdistiller),
    }
    for name, (fixture, checkout) in made.items():
        fixture["source"]["commit"] = commit(checkout)
        write(out / f"{name}.json", fixture)
        print(f"{name}: {fixture['value']:.8g}")


if __name__ == "__main__":
    main()
