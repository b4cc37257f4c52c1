"""CIFAR-100 from its binary files: records parsed, normalised, refused when damaged; .pth teachers read as weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdforge.data.cifar100 import MEAN, RECORD, STD, cifar100, read_split
from kdforge.errors import ConfigError, DataNotFoundError


def write_split(path: Path, labels: list[int], seed: int) -> np.ndarray:
    """CIFAR-100 binary records: coarse label, fine label, 3,072 pixel bytes (R, G, B planes)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    rows = np.concatenate([np.zeros((len(labels), 1), np.uint8), np.array(labels, np.uint8)[:, None], pixels], 1)
    path.write_bytes(rows.tobytes())
    return pixels


def test_records_are_parsed_and_normalised(tmp_path: Path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    train_pixels = write_split(folder / "train.bin", [3, 99, 0, 42], seed=0)
    write_split(folder / "test.bin", [7, 8], seed=1)
    (folder / "fine_label_names.txt").write_text("\n".join(f"name{i}" for i in range(100)) + "\n")
    bundle = cifar100(root=str(folder), augment="none")
    assert bundle.num_classes == 100 and bundle.input_shape == (3, 32, 32)
    assert bundle.class_names[42] == "name42"
    assert bundle.train.labels.tolist() == [3, 99, 0, 42] and len(bundle.test) == 2
    x = bundle.train.inputs[1]
    # Pixel (channel c, row r, column k) is byte c*1024 + r*32 + k of the record's image.
    for c, r, k in ((0, 0, 0), (1, 5, 7), (2, 31, 31)):
        raw = train_pixels[1, c * 1024 + r * 32 + k] / 255.0
        assert float(x[c, r, k]) == pytest.approx((raw - MEAN[c]) / STD[c], rel=1e-5)


def test_damaged_files_are_refused(tmp_path: Path):
    bad = tmp_path / "train.bin"
    bad.write_bytes(b"\0" * (RECORD + 5))
    with pytest.raises(ConfigError, match=r"not a whole number of 3074-byte CIFAR-100 records"):
        read_split(bad)
    write_split(bad, [100], seed=0)
    with pytest.raises(ConfigError, match="fine label 100 is not a CIFAR-100 class"):
        read_split(bad)


def test_a_missing_folder_lists_where_it_looked(tmp_path: Path):
    with pytest.raises(DataNotFoundError, match="CIFAR-100 \\(binary version\\) not found") as err:
        cifar100(root=str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(err.value)


def test_pth_teacher_checkpoints_are_read_as_weights_only(tmp_path: Path):
    from kdforge.models import build_model
    from kdforge.strategies.provision import load_weights

    model = build_model("resnet8x4", 100, (3, 32, 32))
    wrapped = tmp_path / "ckpt_epoch_240.pth"
    # RepDistiller's layout: the state dict under "model", next to plain numbers.
    torch.save({"model": model.state_dict(), "epoch": 240, "best_acc": 72.5}, wrapped)
    fresh = build_model("resnet8x4", 100, (3, 32, 32))
    load_weights(fresh, wrapped, "teacher.checkpoint")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    hostile = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, hostile)
    with pytest.raises(ConfigError, match="is not a plain PyTorch state dict"):
        load_weights(fresh, hostile, "teacher.checkpoint")


def test_the_protocol_crop_pads_with_black_pixels():
    from kdforge.data.augment import AUGMENTS, sample_keys

    black = torch.tensor([-m / s for m, s in zip(MEAN, STD, strict=True)]).view(3, 1, 1)
    x = torch.randn(64, 3, 32, 32)
    ids = torch.arange(64)
    out = AUGMENTS["cifar"](x, sample_keys(0, torch.zeros(64, dtype=torch.long), ids))
    assert out.shape == x.shape
    # Some crop is shifted by the full 4 pixels: its first 4 rows are padding, i.e. black in every channel.
    shifted = [i for i in range(64) if torch.allclose(out[i, :, :4, :], black.expand(3, 4, 32))]
    assert shifted
    # Below them, the image's own pixels (possibly flipped), shifted by some column offset dx in 0..8.
    i = shifted[0]

    def matches(src: torch.Tensor, dx: int) -> bool:
        cols = [c for c in range(32) if 0 <= dx + c - 4 < 32]
        inner = out[i, :, 4:, cols]
        return torch.allclose(inner, src[:, :28, [dx + c - 4 for c in cols]], atol=1e-6)

    assert any(matches(src, dx) for src in (x[i], x[i].flip(-1)) for dx in range(9))
