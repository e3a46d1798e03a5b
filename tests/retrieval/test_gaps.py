"""Retrieval paths found untested by a mutation audit: DDP pool sharding, shuffling, the recipe's tuple cap,
and the task's example input and widths surviving a ``compressed.pt`` round trip."""

from __future__ import annotations

import inspect
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

import nncf_ext
from lightning_modules.data.places_synth import SynthConfig, generate_places
from lightning_modules.retrieval import RetrievalDataModule, RetrievalModule
from lightning_modules.retrieval.recipe import BaseRecipe, build_base, train
from lightning_modules.tasks import get_task, load_compressed, network, save_compressed

ODD = SynthConfig(
    num_places=3, easy_views=2, hard_views=1, junk_views=1, distractors=2, image_size=32, query_size=40
)  # 3 x 4 database views + 2 distractors + 3 query crops: a pool of 17 images, 12 anchors
SIZE = 24


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("odd")
    generate_places(root, "odd", seed=5, config=ODD)
    return root


def datamodule(root: Path, batch_size: int = 4) -> RetrievalDataModule:
    return RetrievalDataModule(root, root, image_size=SIZE, batch_size=batch_size, num_negatives=2)


class FakeGroup:
    """``all_gather`` across threads that stand for DDP ranks: stacks every rank's tensor, as Lightning does
    (equal shapes required, or real DDP would hang)."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world, timeout=20)
        self.slots: list[torch.Tensor | None] = [None] * world

    def all_gather(self, rank: int, tensor: torch.Tensor) -> torch.Tensor:
        self.slots[rank] = tensor
        self.barrier.wait()
        out = torch.stack([t for t in self.slots if t is not None])
        self.barrier.wait()
        return out


def test_pool_descriptors_of_an_odd_pool_over_two_ranks_cover_every_image_once(odd_root: Path) -> None:
    """Each rank describes one equal shard (the last wraps around); gathered, every pool image has its own
    descriptor: none dropped, none left uninitialised, and both ranks agree."""
    tuples = datamodule(odd_root).train_tuples
    n = len(tuples.pool)
    assert n % 2 == 1
    model = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())  # a distinct descriptor per image
    expected = torch.cat([model(images) for images, _ in DataLoader(tuples.pool, batch_size=64)])
    group, results, shards = FakeGroup(2), [torch.empty(0)] * 2, [torch.empty(0)] * 2
    errors: list[BaseException] = []

    def rank_main(rank: int) -> None:
        try:
            module = RetrievalModule(model, mining_batch_size=4)
            module._trainer = SimpleNamespace(world_size=2, global_rank=rank)  # type: ignore[assignment]
            gathered: list[torch.Tensor] = []

            def all_gather(tensor: torch.Tensor) -> torch.Tensor:
                gathered.append(group.all_gather(rank, tensor))
                return gathered[-1]

            module.all_gather = all_gather  # type: ignore[method-assign,assignment]
            results[rank] = module.pool_descriptors(tuples)
            shards[rank] = gathered[1]
        except BaseException as e:  # re-raised in the main thread
            errors.append(e)
            group.barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    if errors:
        raise errors[0]
    covered = shards[0].flatten().tolist()
    assert sorted(set(covered)) == list(range(n)) and len(covered) == 2 * ((n + 1) // 2)  # one repeat only
    for full in results:
        assert full.shape == expected.shape
        torch.testing.assert_close(full, expected)
    assert torch.equal(results[0], results[1])


def test_training_loader_shuffles_with_the_global_seed(odd_root: Path) -> None:
    """A fresh order each epoch drawn from torch's global generator (``pl.seed_everything`` fixes it);
    only full batches."""
    loader = datamodule(odd_root, batch_size=5).train_dataloader()
    assert isinstance(loader.sampler, RandomSampler)
    count = len(loader.dataset)  # type: ignore[arg-type]

    def order(seed: int) -> list[list[int]]:
        pl.seed_everything(seed, verbose=False)
        return [list(batch) for batch in loader.batch_sampler]  # type: ignore[union-attr]

    first = order(0)
    assert first == order(0)
    assert all(len(batch) == 5 for batch in first) and len(first) == count // 5
    flat = [i for batch in first for i in batch]
    assert len(set(flat)) == len(flat) and set(flat) <= set(range(count))
    assert flat != sorted(flat)
    assert order(1) != first


def test_recipe_tuples_per_epoch_caps_the_mined_tuples(odd_root: Path) -> None:
    """``tuples_per_epoch`` reaches mining as ``max_tuples``: an epoch trains on that many anchors."""
    dm = datamodule(odd_root)
    anchors = len(dm.train_tuples.anchors)
    recipe = BaseRecipe(
        widths=(4, 8),
        num_clusters=2,
        whitening_dim=4,
        image_size=SIZE,
        batch_size=4,
        num_negatives=2,
        epochs=1,
        tuples_per_epoch=5,
    )
    assert anchors > 5
    model = build_base(recipe, dm, init=False)
    train(model, dm, recipe, limit_train_batches=1, limit_val_batches=0)
    mined = dm.train_tuples.tuples
    assert mined.shape == (5, 4)
    assert len(set(mined[:, 0].tolist())) == 5 and set(mined[:, 0].tolist()) <= set(
        dm.train_tuples.anchors.tolist()
    )


def test_task_module_keeps_its_image_size_and_widths_through_compressed_pt(tmp_path: Path) -> None:
    """The example input (NNCF's graph, export) has the configured image size; ``compressed.pt`` rebuilds
    the same backbone widths and example input; the defaults match the recipe and the datamodule."""
    task = get_task("retrieval")
    module = task.module(widths=(4, 6, 8), num_clusters=2, whitening_dim=4, image_size=40)
    assert tuple(module.example_input_array.shape) == (1, 3, 40, 40)
    widths = [m.out_channels for m in network(module).backbone.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [4, 6, 8]

    config = nncf_ext.load_config({"compression": [{"algorithm": "kmeans_quantization", "bits": 3}]})
    nncf_ext.create_compression(network(module), config, module.example_input_array)
    path = save_compressed(tmp_path / "compressed.pt", "retrieval", module, config)
    _, loaded, payload = load_compressed(path)
    assert payload["hparams"]["widths"] == [4, 6, 8] and payload["hparams"]["image_size"] == 40
    rebuilt = [m.out_channels for m in network(loaded).backbone.modules() if isinstance(m, nn.Conv2d)]
    assert rebuilt == widths
    assert tuple(loaded.example_input_array.shape) == (1, 3, 40, 40)

    default = task.module().example_input_array.shape[-1]
    assert default == BaseRecipe().image_size
    assert default == inspect.signature(RetrievalDataModule).parameters["image_size"].default


def test_cli_datamodule_resizes_to_the_module_image_size(odd_root: Path) -> None:
    """``nncf-ext compress`` trains at the size the module is wrapped and exported at (``--init-from`` a
    base of another size too); the embedded sets go through the same options."""
    task = get_task("retrieval")
    data = f"{odd_root},{odd_root}"
    assert task.datamodule(data, 2, 0, {"image_size": 40}).image_size == 40
    assert task.datamodule(data, 2, 0, None).image_size == task.module().example_input_array.shape[-1]


def test_the_retrieval_task_example_is_a_batch_of_training_images(odd_root: Path) -> None:
    """What the CLI gives the callback: activation ranges start from it, so real images, at the data's size."""
    task = get_task("retrieval")
    dm = task.datamodule(f"{odd_root},{odd_root}", 2, 0, {"image_size": 40})
    example = task.example_input(dm)
    pool = torch.cat([images for images, _ in dm.init_dataloader()])
    assert example.shape == (min(32, len(pool)), 3, 40, 40) and torch.equal(example, pool[: len(example)])
    assert float(task.module().example_input_array.std()) > 0.5  # not zeros
