"""Datasets as tensors: the digits default, the torchvision loaders' offline error, batches and the attribution set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attrlab.data import (
    BatchSampler,
    DatasetUnavailableError,
    attribution_set,
    load_dataset,
)


def test_digits_shapes_range_and_split(digits):
    assert digits.input_shape == (1, 28, 28) and digits.num_classes == 10
    assert len(digits.train) + len(digits.test) == 1797
    assert len(digits.test) == 360
    for split in (digits.train, digits.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.min() >= -1.0 and split.x.max() <= 1.0
        assert split.x.min() == -1.0  # the digits' background is 0 in [0, 1], i.e. -1 after normalisation
    counts = torch.bincount(digits.test.y, minlength=10)
    assert counts.min() >= 35  # stratified: every class is represented about equally


def test_digits_is_deterministic(digits):
    again = load_dataset("digits", device="cpu")
    assert torch.equal(again.train.x, digits.train.x) and torch.equal(again.test.y, digits.test.y)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid names: digits, canvas, fashionmnist, cifar10"):
        load_dataset("mnist")


@pytest.mark.parametrize("name, hint", [("fashionmnist", "FashionMNIST/raw"), ("cifar10", "cifar-10-python.tar.gz")])
def test_missing_torchvision_dataset_says_where_to_put_the_files(tmp_path, name, hint):
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset(name, data_root=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path) in message and hint in message and "download=False" in message


def test_torchvision_loader_reads_files_put_there_by_hand(tmp_path):
    """Write a tiny FashionMNIST in the torchvision raw format and load it through the real loader."""
    import gzip

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def write(name: str, magic: int, array: np.ndarray) -> None:
        header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        with gzip.open(raw / name, "wb") as handle:
            handle.write(header + array.astype(np.uint8).tobytes())

    for prefix, count in (("train", 30), ("t10k", 20)):
        write(f"{prefix}-images-idx3-ubyte.gz", 2051, rng.integers(0, 256, (count, 28, 28)))
        write(f"{prefix}-labels-idx1-ubyte.gz", 2049, np.arange(count) % 10)
    # torchvision checks the archives against known MD5 sums only when downloading; extract what it expects
    for path in raw.glob("*.gz"):
        (raw / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
    dataset = load_dataset("fashionmnist", data_root=tmp_path, download=False, device="cpu")
    assert dataset.input_shape == (1, 28, 28) and len(dataset.train) == 30 and len(dataset.test) == 20
    assert dataset.train.x.min() >= -1 and dataset.train.x.max() <= 1
    assert dataset.classes[9] == "Ankle boot"


def test_batch_sampler_covers_each_epoch_once_and_is_addressable_by_step():
    sampler = BatchSampler(size=250, batch_size=100, seed=1)
    assert sampler.steps_per_epoch == 3
    epoch = torch.cat([sampler.indices(step) for step in range(3)])
    assert sorted(epoch.tolist()) == list(range(250))
    assert len(sampler.indices(2)) == 50
    fresh = BatchSampler(size=250, batch_size=100, seed=1)
    assert torch.equal(fresh.indices(4), sampler.indices(4))  # a resumed run draws the same batch
    assert not torch.equal(sampler.indices(0), sampler.indices(3))  # epochs are shuffled differently
    with pytest.raises(ValueError, match="batch_size must be positive"):
        BatchSampler(size=10, batch_size=0)


def test_attribution_set_first_in_dataset_order_is_class_major(digits):
    chosen = attribution_set(digits, per_class=10)
    assert len(chosen) == 200
    assert chosen.y.tolist() == [c for c in range(10) for _ in range(20)]
    assert chosen.is_train.tolist() == ([True] * 10 + [False] * 10) * 10
    expected = torch.nonzero(digits.train.y == 3).flatten()[:10]
    assert torch.equal(chosen.index[60:70], expected)
    assert torch.equal(chosen.x[60:70], digits.train.x[expected])
    expected_test = torch.nonzero(digits.test.y == 3).flatten()[:10]
    assert torch.equal(chosen.x[70:80], digits.test.x[expected_test])


def test_attribution_set_random_is_seeded(digits):
    first = attribution_set(digits, per_class=5, selection="random", seed=1)
    again = attribution_set(digits, per_class=5, selection="random", seed=1)
    other = attribution_set(digits, per_class=5, selection="random", seed=2)
    assert torch.equal(first.index, again.index) and not torch.equal(first.index, other.index)
    assert first.y.tolist() == [c for c in range(10) for _ in range(10)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"selection": "best"}, "unknown selection 'best'; valid choices: first, random"),
        ({"per_class": 0}, "per_class must be positive"),
        ({"per_class": 500}, "fewer than per_class=500"),
    ],
)
def test_attribution_set_bad_input(digits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        attribution_set(digits, **kwargs)


def test_subset_is_seeded_and_sorted(digits):
    subset = digits.test.subset(50, seed=3)
    assert len(subset) == 50
    assert torch.equal(subset.x, digits.test.subset(50, seed=3).x)
    with pytest.raises(ValueError, match="subset size must be between 1 and 360"):
        digits.test.subset(1000)
