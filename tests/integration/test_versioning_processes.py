"""The dataset registry under concurrent writers in separate worker processes."""

from __future__ import annotations

import multiprocessing

import pytest

from healthmate_features.datasets.registry import DatasetRegistry, data_hash


def _save_in_process(root: str, barrier, seed: int) -> tuple[str, str]:
    """Runs in a worker: build the dataset of `seed` there, save it, return (version, data hash)."""
    from tests.helpers.datasets import make_dataset  # a worker has no fixtures

    barrier.wait()
    dataset = make_dataset(seed=seed)
    return DatasetRegistry(root).save(dataset, "risk"), data_hash(dataset)


@pytest.mark.slow
def test_concurrent_process_saves_get_distinct_complete_versions(tmp_path, make_dataset):
    root = str(tmp_path / "datasets")
    # Eight workers from a fork server that has imported the dataset helpers once: each worker is a
    # process of its own (own memory, own file handles), without eight interpreter start-ups.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.helpers.datasets"])
    with context.Manager() as manager:
        barrier = manager.Barrier(8)
        with context.Pool(8) as pool:
            results = pool.starmap(_save_in_process, [(root, barrier, i % 2) for i in range(8)])
    registry = DatasetRegistry(root)
    versions = [v for v, _ in results]
    assert len(set(versions)) == 8 and set(versions) == set(registry.versions("risk"))
    assert all(registry.verify("risk", v).ok for v in versions)
    assert not list((tmp_path / "datasets" / "risk").glob(".tmp-*"))
    # the hash of the same data is the same in every process
    for seed in (0, 1):
        assert {h for i, (_, h) in enumerate(results) if i % 2 == seed} == {data_hash(make_dataset(seed=seed))}
