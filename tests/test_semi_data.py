"""Semi-supervised data: strong/text augmentations, the labelled split, and resumable mixed batches."""

from __future__ import annotations

import math

import pytest
import torch

from kdforge.data.augment import flip_crop, get_augment, sample_keys, strong, token_mask, token_mask_strong
from kdforge.data.base import ArrayDataset, stratified_fraction, subset
from kdforge.data.semi import SemiBatchSampler, labelled_positions, mask_unlabelled, semi_loader
from kdforge.errors import ConfigError

SPECIAL = (0, 101, 102)


def keys_for(n: int, view: int = 0, seed: int = 3):
    return sample_keys(seed, torch.full((n,), view), torch.arange(n))


def token_ids(n: int = 64, length: int = 40) -> torch.Tensor:
    """[CLS] distinct word ids [SEP] then padding, with lengths 0..length-2 real tokens."""
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(n, length, dtype=torch.int64)
    for i in range(n):
        real = i % (length - 1)
        ids[i, 0] = 101
        ids[i, 1 : 1 + real] = torch.randperm(5000, generator=g)[:real] + 1000
        ids[i, 1 + real] = 102
    return ids


def test_strong_is_a_jittered_flip_crop_with_one_zeroed_square():
    torch.manual_seed(0)
    x = torch.rand(48, 1, 28, 28) + 1  # no zero pixel before augmentation
    keys = keys_for(48)
    out = strong(x, keys)
    assert out.shape == x.shape and torch.equal(out, strong(x, keys)), "a pure function of the keys"
    ref = flip_crop(x, keys, pad=4)  # the same flip and 4-pixel crop, before jitter and cutout
    contrasts = []
    for o, r in zip(out, ref, strict=True):
        kept = (o != 0) & (r != 0)
        # On kept pixels the view is an affine map of the plain flip-crop: the per-sample brightness/contrast jitter.
        a, b = torch.linalg.lstsq(torch.stack([r[kept], torch.ones_like(r[kept])], 1), o[kept, None]).solution[:, 0]
        assert torch.allclose(o[kept], a * r[kept] + b, atol=1e-4)
        contrasts.append(float(a))
        cut = torch.nonzero(((o == 0) & (r != 0))[0])
        assert 0 < len(cut) <= 64, "the cutout zeroes at most an 8×8 square inside the image"
        rows, cols = cut[:, 0], cut[:, 1]
        assert rows.max() - rows.min() < 8 and cols.max() - cols.min() < 8
    assert min(contrasts) >= 0.8 - 1e-4 and max(contrasts) <= 1.2 + 1e-4
    assert max(contrasts) - min(contrasts) > 0.1, "contrast is drawn per sample"
    # Small images get a smaller pad and cutout: at most a 4×4 square of an 8×8 digit is cut.
    small = strong(torch.rand(16, 1, 8, 8) + 1, keys_for(16))
    assert all(0 < int((s == 0).sum()) <= 4 * 8 + 4 * 8 + 16 for s in small)


def test_token_mask_masks_an_exact_share_of_real_tokens_and_never_padding():
    ids = token_ids()
    keys = keys_for(len(ids))
    out = token_mask(ids, keys)
    assert out.dtype == torch.int64 and torch.equal(out, token_mask(ids, keys))
    special = torch.isin(ids, torch.tensor(SPECIAL))
    assert torch.equal(out[special], ids[special]), "padding, [CLS] and [SEP] are untouched"
    changed = out != ids
    assert torch.all(out[changed] == 103)
    real = (~special).sum(1)
    assert torch.equal(changed.sum(1), torch.floor(real * 0.15 + 0.5).long())
    other = token_mask(ids, keys_for(len(ids), view=1))
    assert not torch.equal(other, out), "another view masks other tokens"


def test_token_mask_strong_masks_more_and_swaps_one_adjacent_pair():
    ids = token_ids()
    out = token_mask_strong(ids, keys_for(len(ids)))
    special = torch.isin(ids, torch.tensor(SPECIAL))
    assert torch.equal(out[special], ids[special])
    real = (~special).sum(1)
    # A swap keeps the multiset of tokens: the [MASK] count is the 35% share exactly.
    assert torch.equal((out == 103).sum(1), torch.floor(real * 0.35 + 0.5).long())
    swapped = 0
    for i in range(len(ids)):
        moved = torch.nonzero((out[i] != ids[i]) & (out[i] != 103)).flatten()
        assert len(moved) <= 2
        if len(moved) >= 1:
            j = int(moved.min())
            # The moved token came from its neighbour: a swap of two adjacent real tokens.
            pair = {int(ids[i, j]), int(ids[i, j + 1])} if j + 1 < ids.shape[1] else set()
            assert int(out[i, j]) in pair or int(out[i, j]) == int(ids[i, j - 1])
            swapped += 1
    assert swapped > len(ids) // 2, "most rows with two real tokens show their swap"


def test_augmentations_refuse_the_wrong_inputs_with_the_key():
    with pytest.raises(ConfigError, match=r"data\.augment='strong' needs image inputs of shape \(N, C, H, W\)"):
        ArrayDataset(token_ids(), torch.zeros(64, dtype=torch.int64), augment="strong")
    with pytest.raises(ConfigError, match=r"data\.augment='token_mask' needs integer token ids of shape \(N, L\)"):
        ArrayDataset(torch.rand(4, 1, 8, 8), None, augment="token_mask")
    with pytest.raises(ConfigError, match=r"needs integer token ids.*floating-point"):
        ArrayDataset(torch.rand(4, 10), None, augment="token_mask_strong")
    with pytest.raises(ConfigError, match=r"view 'strong' \(input@strong\)='token_mask' needs integer token ids"):
        ArrayDataset(torch.rand(4, 1, 8, 8), None, extra_views={"strong": "token_mask"})
    with pytest.raises(ConfigError, match=r"unknown data\.augment 'rotate'; valid augmentations: none, flip_crop"):
        get_augment("rotate")
    for message in ("strong", "token_mask"):
        with pytest.raises(ConfigError) as err:
            get_augment(message, 3)
        assert "\n" not in str(err.value)


def labelled(n: int = 200, classes: int = 5) -> ArrayDataset:
    torch.manual_seed(1)
    base = ArrayDataset(torch.rand(n, 1, 8, 8), torch.arange(n) % classes)
    # Sample ids that differ from positions, as after a validation split.
    return subset(base, torch.arange(n - 1, -1, -1)[: n - 7])


@pytest.mark.parametrize(("fraction", "seed"), [(0.1, 0), (0.25, 7), (0.5, 3)])
def test_labelled_positions_are_the_supervised_baselines_samples(fraction: float, seed: int):
    ds = labelled()
    pos = labelled_positions(ds, fraction, seed)
    baseline = stratified_fraction(ds, fraction, seed)
    assert torch.equal(ds.indices[pos], baseline.indices)
    assert torch.equal(ds.labels[pos], baseline.labels)


def test_labelled_fraction_errors_name_the_key():
    ds = labelled()
    with pytest.raises(ConfigError, match=r"strategy\.labelled_fraction=1\.0 leaves no unlabeled data"):
        labelled_positions(ds, 1.0, 0)
    with pytest.raises(ConfigError, match=r"strategy\.labelled_fraction=0\.0 keeps no labels"):
        labelled_positions(ds, 0.0, 0)
    tiny = ArrayDataset(torch.rand(3, 2), torch.arange(3))  # one sample per class: every one keeps its label
    with pytest.raises(ConfigError, match=r"strategy\.labelled_fraction=0\.5 leaves no unlabeled data"):
        labelled_positions(tiny, 0.5, 0)


def test_mask_unlabelled_shares_inputs_and_hides_other_labels():
    ds = ArrayDataset(torch.rand(10, 3), torch.arange(10) % 3, augment="none", extra_views={"s": "none"})
    masked = mask_unlabelled(ds, torch.tensor([1, 4]))
    assert masked.inputs is ds.inputs and masked.indices is ds.indices and masked.extra_views == {"s": "none"}
    assert masked.labels.tolist() == [-100, 1, -100, -100, 1, -100, -100, -100, -100, -100]
    assert ds.labels.tolist() == [i % 3 for i in range(10)], "the original labels are untouched"


def collect(sampler: SemiBatchSampler) -> list[list[int]]:
    return [list(b) for b in sampler]


def test_semi_batches_mix_a_cycled_labelled_set_with_one_pass_over_the_unlabelled():
    lab, unl = torch.arange(0, 10), torch.arange(10, 47)
    g = torch.Generator().manual_seed(0)
    sampler = SemiBatchSampler(lab, unl, labelled_batch=4, unlabelled_batch=8, generator=g, size=47, tag=False)
    batches = collect(sampler)
    assert len(sampler) == len(batches) == math.ceil(37 / 8) and sampler.epoch == 0
    assert all(len(b) == 12 for b in batches[:-1]) and len(batches[-1]) == 4 + 37 % 8
    assert sorted(p for b in batches for p in b[4:]) == unl.tolist(), "each unlabeled sample once per epoch"
    seen = [p for b in batches for p in b[:4]]
    assert all(p < 10 for p in seen) and len(seen) == 20
    assert sorted(seen[:10]) == lab.tolist() and sorted(seen[10:20]) == lab.tolist(), "reshuffled passes"
    assert seen[:10] != seen[10:20]
    tagged = SemiBatchSampler(lab, unl, 4, 8, torch.Generator().manual_seed(0), size=47, tag=True)
    first, second = collect(tagged), collect(tagged)
    assert first == batches, "epoch 0's tag is 0"
    assert all(47 <= p < 94 for b in second for p in b) and tagged.epoch == 1


def test_restoring_the_generator_replays_an_epoch_and_skipping_gives_its_tail():
    ds = ArrayDataset(torch.rand(60, 1, 8, 8) + 1, torch.arange(60) % 4, extra_views={"strong": "strong"})
    pos = labelled_positions(ds, 0.2, seed=0)
    loader = semi_loader(ds, pos, labelled_batch=3, unlabelled_batch=10, seed=5)
    sampler = loader.batch_sampler
    assert isinstance(sampler, SemiBatchSampler) and sampler.generator is loader.generator
    list(loader)  # epoch 0; the state saved below is epoch 1's start
    state, epoch = loader.generator.get_state(), sampler.epoch
    original = list(loader)
    assert len(original) == math.ceil(48 / 10)
    for batch in original:
        assert torch.equal(batch["view"], torch.ones(len(batch["index"]), dtype=torch.int64))
        assert (batch["label"][:3] >= 0).all() and (batch["label"][3:] == -100).all()
        assert batch["input@strong"].shape == batch["input"].shape
        assert not torch.equal(batch["input@strong"], batch["input"])
    loader.generator.set_state(state)
    sampler.epoch = epoch
    again = list(loader)
    for a, b in zip(original, again, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loader.generator.set_state(state)
    sampler.epoch = epoch
    it = iter(loader)
    for _ in range(2):
        next(it)
    tail = list(it)
    assert [t["index"].tolist() for t in tail] == [o["index"].tolist() for o in original[2:]]
    assert all(torch.equal(t["input@strong"], o["input@strong"]) for t, o in zip(tail, original[2:], strict=True))
    after = list(loader)
    assert [a["index"].tolist() for a in after] != [o["index"].tolist() for o in original], "the next epoch differs"


def test_semi_sampler_refuses_bad_batches_and_empty_sets():
    g = torch.Generator()
    with pytest.raises(ConfigError, match=r"strategy\.labelled_batch must be >= 1, got 0"):
        SemiBatchSampler(torch.arange(2), torch.arange(2, 5), 0, 2, g, 5, False)
    with pytest.raises(ConfigError, match=r"strategy\.unlabelled_batch must be >= 1, got 0"):
        SemiBatchSampler(torch.arange(2), torch.arange(2, 5), 2, 0, g, 5, False)
    with pytest.raises(ConfigError, match="leaves no unlabeled data"):
        SemiBatchSampler(torch.arange(2), torch.arange(0), 2, 2, g, 2, False)
