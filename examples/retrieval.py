"""Visual place recognition on the embedded data: train a base model, compare it with the untrained network.

    .venv/bin/python examples/retrieval.py       # small backbone, 64 px: trains in 1-4 min on 2 cores
    .venv/bin/python examples/retrieval.py --epochs 20 --output outputs/retrieval_example.json
    .venv/bin/python examples/retrieval.py --train /data/rparis6k --test /data/roxford5k   # real data
    .venv/bin/python examples/retrieval.py --train /data/paris6k --test /data/oxford5k     # original format

Trains on ``synth_paris`` and tests on ``synth_oxford`` (disjoint places; generated under ``$NNCF_EXT_DATA``
or ``./data`` on first use), as the paper fine-tunes on Paris and tests on Oxford.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from lightning_modules.retrieval.datamodule import RetrievalDataModule
from lightning_modules.retrieval.evaluation import evaluate
from lightning_modules.retrieval.recipe import BaseRecipe, build_base, embedded_datamodule, train
from nncf_ext.cli import POSITIVE, output_file

REVISITED = ("mAP_easy", "mAP_medium", "mAP_hard", "mP@5_medium")
ORIGINAL = ("mAP_original", "mP@5_original")  # Oxford5k / Paris6k ground truth


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=POSITIVE, default=BaseRecipe.epochs)
    parser.add_argument("--image-size", type=POSITIVE, default=BaseRecipe.image_size)
    parser.add_argument("--seed", type=int, default=BaseRecipe.seed)
    parser.add_argument(
        "--train", type=Path, help="revisited-format training dataset directory (default: embedded)"
    )
    parser.add_argument(
        "--test", type=Path, help="revisited-format test dataset directory (default: embedded)"
    )
    parser.add_argument("--output", type=output_file, help="write the results as JSON here")
    args = parser.parse_args()

    recipe = replace(BaseRecipe(), epochs=args.epochs, image_size=args.image_size, seed=args.seed)
    if (args.train is None) != (args.test is None):
        parser.error("give both --train and --test, or neither")
    if args.train is not None:
        dm = RetrievalDataModule(
            args.train, args.test, image_size=recipe.image_size, batch_size=recipe.batch_size,
            num_negatives=recipe.num_negatives, seed=recipe.seed,
        )  # fmt: skip
    else:
        dm = embedded_datamodule(recipe)
    print(
        f"train: {dm.train_data.root} ({dm.train_data.num_database} images, "
        f"{dm.train_data.num_queries} places)"
    )
    print(f"test:  {dm.val_data.root} ({dm.val_data.num_database} images, {dm.val_data.num_queries} queries)")

    model = build_base(recipe, dm)
    untrained = evaluate(model, dm.val_data, recipe.image_size)
    run = train(model, dm, recipe)
    trained = evaluate(model, dm.val_data, recipe.image_size)

    columns = REVISITED if "mAP_medium" in trained else ORIGINAL
    print(f"\n{'model':<36}" + "".join(f"{c:>15}" for c in columns))
    for name, res in (("untrained (NetVLAD + PCA from data)", untrained), ("trained base model", trained)):
        print(f"{name:<36}" + "".join(f"{res[c]:>15.3f}" for c in columns))
    print(f"\ntraining: {recipe.epochs} epochs in {run['seconds']:.0f} s")
    if args.output is not None:
        result = {"recipe": recipe.__dict__, "untrained": untrained, "trained": trained, **run}
        args.output.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
