"""The loader: the same batches whether the set is resident, memory-mapped or staged, across epochs and resumes."""

import pytest
import torch

from purrgan.data import load_images, split_validation, to_float
from purrgan.data.loader import DeviceLoader

CPU = torch.device("cpu")


def _batches(loader, count):
    return [tuple(t.clone() if t is not None else None for t in loader.next()) for _ in range(count)]


@pytest.mark.parametrize("staged", [False, True], ids=["gathered", "staged-through-two-buffers"])
def test_prefetched_batches_equal_plain_indexing_across_epochs_and_a_resume(staged):
    data = load_images("digits", 16, 1)
    train, _ = split_validation(data, 0.1)  # a subset: read through its index, never copied
    assert train.storage is data.storage
    loader = DeviceLoader(train, 100, seed=7, device=CPU, staged=staged)
    got = _batches(loader, 2 * loader.batches_per_epoch + 3)  # over two epoch boundaries
    for k, (images, labels) in enumerate(got):
        epoch, index = divmod(k, loader.batches_per_epoch)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(7 * 1_000_003 + epoch))
        chosen = order[index * 100:(index + 1) * 100]
        assert torch.equal(images, to_float(train.images[chosen])) and torch.equal(labels, train.labels[chosen]), k
    resumed = DeviceLoader(train, 100, seed=7, device=CPU, staged=staged)
    resumed.next()  # a prefetch in flight for a batch that will not come next
    resumed.load_state({"epoch": 1, "index": 4})
    images, labels = resumed.next()
    expected = got[loader.batches_per_epoch + 4]
    assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])


def test_ranks_take_disjoint_shares_of_each_global_batch_with_prefetching():
    data = load_images("digits", 16, 1)
    whole = _batches(DeviceLoader(data, 60, seed=3, device=CPU), 5)
    shards = [_batches(DeviceLoader(data, 60, seed=3, device=CPU, rank=r, world_size=3), 5) for r in range(3)]
    for k in range(5):
        joined = torch.cat([shards[r][k][0] for r in range(3)])
        assert torch.equal(joined.sort(0).values, whole[k][0].sort(0).values)
