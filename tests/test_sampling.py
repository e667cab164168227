"""The training stream: a pure function of (seed, batch number), shardable and resumable."""

from __future__ import annotations

import random

import numpy as np
import torch

from pretrainlab.data.sampling import BATCH_KEY, SeededCollator, StreamBatchSampler, StreamDataset


def batches(sampler: StreamBatchSampler) -> list[list[tuple[int, int]]]:
    return list(sampler)


def test_each_epoch_visits_every_full_batch_example_once():
    sampler = StreamBatchSampler(num_examples=23, batch_size=4, seed=3, total_batches=15)
    out = batches(sampler)
    assert len(out) == len(sampler) == 15
    per_epoch = 23 // 4
    for epoch in range(2):
        seen = [i for batch in out[epoch * per_epoch : (epoch + 1) * per_epoch] for i, _ in batch]
        assert len(seen) == len(set(seen)) == per_epoch * 4  # no repeats inside an epoch
    assert [b for batch in out for _, b in batch] == [b for b in range(15) for _ in range(4)]
    first_epoch = [i for batch in out[:per_epoch] for i, _ in batch]
    second_epoch = [i for batch in out[per_epoch : 2 * per_epoch] for i, _ in batch]
    assert first_epoch != second_epoch  # reshuffled every epoch


def test_resuming_at_batch_k_yields_the_tail_of_the_uninterrupted_stream():
    full = batches(StreamBatchSampler(50, 4, seed=1, total_batches=30))
    for start in (0, 7, 12, 29):
        resumed = batches(StreamBatchSampler(50, 4, seed=1, total_batches=30, start_batch=start))
        assert resumed == full[start:]


def test_ranks_split_every_global_batch_disjointly():
    single = batches(StreamBatchSampler(40, 6, seed=0, total_batches=5, world_size=1))
    ranks = [
        batches(StreamBatchSampler(40, 3, seed=0, total_batches=5, rank=r, world_size=2)) for r in (0, 1)
    ]
    for b in range(5):
        merged = ranks[0][b] + ranks[1][b]
        assert merged == single[b]
        assert not {i for i, _ in ranks[0][b]} & {i for i, _ in ranks[1][b]}


def test_seed_changes_the_order():
    a = batches(StreamBatchSampler(40, 4, seed=0, total_batches=3))
    b = batches(StreamBatchSampler(40, 4, seed=1, total_batches=3))
    assert a != b


def test_stream_dataset_tags_examples_with_their_batch():
    ds = StreamDataset([{"input_ids": [1, 2]}, {"input_ids": [3, 4]}])
    assert ds[(1, 9)] == {"input_ids": [3, 4], BATCH_KEY: 9}


def _random_collate(examples):
    ids = torch.tensor([e["input_ids"] for e in examples])
    assert all(BATCH_KEY not in e for e in examples)  # the tag never reaches the objective
    return {"noise": torch.rand(ids.shape), "input_ids": ids}


def test_seeded_collator_depends_on_batch_number_or_content_not_on_global_rng():
    collate = SeededCollator(_random_collate, seed=5)
    tagged = [{"input_ids": [1, 2, 3], BATCH_KEY: 4}]
    torch.manual_seed(0)
    state = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    first = collate(tagged)["noise"]
    assert torch.equal(torch.get_rng_state(), state[0])  # the global RNG is untouched
    torch.manual_seed(123)
    assert torch.equal(collate(tagged)["noise"], first)  # same batch number, same randomness
    assert not torch.equal(collate([{"input_ids": [1, 2, 3], BATCH_KEY: 5}])["noise"], first)
    untagged = [{"input_ids": [1, 2, 3]}]
    assert torch.equal(collate(untagged)["noise"], collate(untagged)["noise"])  # keyed by content
    assert not torch.equal(collate([{"input_ids": [3, 2, 1]}])["noise"], collate(untagged)["noise"])
    assert not torch.equal(SeededCollator(_random_collate, seed=6)(tagged)["noise"], first)
