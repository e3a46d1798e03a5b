import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import nncf_ext
from lightning_modules.data.places_synth import SynthConfig
from lightning_modules.retrieval.demo import TEMPLATE, DemoSettings, RecipeRow, row_config, row_configs, run
from lightning_modules.retrieval.recipe import BaseRecipe
from nncf_ext.cli import main
from nncf_ext.errors import ConfigError
from nncf_ext.export import load_archive

TINY = SynthConfig(
    num_places=6, easy_views=2, hard_views=1, junk_views=1, distractors=6, image_size=48, query_size=64
)


def test_row_config_fills_the_template() -> None:
    template = json.loads(TEMPLATE.read_text())
    config = row_config(template, RecipeRow(0.75, 2.5, 8, 5))
    by_type = {
        e["target_scope"]["types"][0]: e["threshold"]["target"]
        for e in config["compression"]
        if e["algorithm"] == "threshold_pruning"
    }
    assert by_type == {"conv2d": 0.75, "linear": 2.5}
    kmeans = [e for e in config["compression"] if e["algorithm"] == "kmeans_quantization"]
    assert [(e["target_scope"]["types"], e["bits"]) for e in kmeans] == [(["conv2d"], 8), (["linear"], 5)]
    assert RecipeRow(0.75, 2.5, 8, 5).name == "q0.75-2.5_8-5bit"
    assert row_config(template, RecipeRow(0.5, 2.0, 4))["compression"][4]["bits"] == 4
    assert template["compression"][1]["threshold"]["target"] == 0.5  # the template itself is untouched
    nncf_ext.load_config(config)
    one_codebook = {**template, "compression": template["compression"][:4]}  # no whitening k-means entry
    with pytest.raises(ConfigError, match="two kmeans_quantization entries"):
        row_config(one_codebook, RecipeRow(0.5, 2.0, 8))


def test_row_config_sets_the_whitening_criterion() -> None:
    template = json.loads(TEMPLATE.read_text())
    row = RecipeRow(0.75, 5.5, 5, 4, fc_criterion="channel_std")
    assert (row.name, row.threshold_label) == ("q0.75-5.5c_5-4bit", "0.75/5.5c")
    assert row.per_row and not RecipeRow(0.75, 5.5, 5, 4).per_row
    config = row_config(template, row)
    criteria = {
        e["target_scope"]["types"][0]: e["criterion"]
        for e in config["compression"]
        if e["algorithm"] == "threshold_pruning"
    }
    assert criteria == {"conv2d": "std", "linear": "channel_std"}
    assert nncf_ext.load_config(config).to_dict()["compression"][2]["criterion"] == "channel_std"
    assert template["compression"][2]["criterion"] == "std"  # the template itself is untouched
    assert row_config(template, RecipeRow(0.75, 5.5, 5, 4))["compression"][2]["criterion"] == "std"
    with pytest.raises(ConfigError, match="criterion"):
        nncf_ext.load_config(row_config(template, RecipeRow(0.75, 5.5, 5, 4, fc_criterion="row")))


def test_row_configs_refuse_same_names_and_too_few_epochs() -> None:
    template = json.loads(TEMPLATE.read_text())
    rows = (RecipeRow(0.75, 6.5, 5, 4, "channel_std"), RecipeRow(0.75, 6.50, 5, 4, "channel_std"))
    with pytest.raises(ConfigError, match=r"two rows are named q0\.75-6\.5c_5-4bit"):
        row_configs(template, rows, 16)
    assert list(row_configs(template, rows[:1], 16)) == ["q0.75-6.5c_5-4bit"]
    with pytest.raises(ConfigError, match="10 fine-tuning epochs end before quantization starts"):
        row_configs(template, rows[:1], 10)  # the template's k-means starts at epoch 10
    row_configs(template, rows[:1], 11)


def test_template_without_a_whitening_pruning_entry_is_refused(tmp_path: Path) -> None:
    template = json.loads(TEMPLATE.read_text())
    template["compression"] = [
        e for e in template["compression"] if e.get("target_scope") != {"types": ["linear"]}
    ]
    with pytest.raises(ConfigError, match="linear"):
        row_config(template, RecipeRow(0.5, 2.0, 8))
    bad = tmp_path / "template.json"
    bad.write_text(json.dumps(template))
    assert main(["demo", "--config", str(bad), "--output-dir", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()  # refused before anything was trained or written


def test_tiny_demo_writes_table_plot_archives_and_irs(tmp_path: Path) -> None:
    recipe = replace(
        BaseRecipe(), epochs=2, tuples_per_epoch=24, image_size=32, num_clusters=4, whitening_dim=16
    )
    settings = DemoSettings(
        recipe=recipe,
        data=TINY,
        epochs=11,
        rows=(RecipeRow(0.5, 2.0, 5),),
        nncf_ratios=(0.8,),
        control=False,
        progress_bar=False,
    )
    result = run(settings, tmp_path / "out", data_root=tmp_path / "data")
    out = tmp_path / "out"
    assert (out / "size_vs_map.png").stat().st_size > 10_000
    saved = json.loads((out / "demo.json").read_text())
    assert [r["group"] for r in saved["rows"]] == ["ours 5-bit", "NNCF magnitude pruning + int8 weights"]
    ours, nncf_row = result["rows"]
    # the ratio is measured on the archive file, and the IR of the base scores what the torch model scores
    assert (out / "archives" / f"{ours['name']}.dca").stat().st_size == ours["archive_bytes"]
    assert ours["ratio"] == pytest.approx(result["fp32_bytes"] / ours["archive_bytes"])
    assert ours["ratio"] > 4 and 0.3 < ours["pruned"] < 1
    assert nncf_row["pruned"] == pytest.approx(0.8, abs=0.02)
    for split in settings.test_sets:
        base_ir, base_torch = result["base"][split]["mAP_medium"], result["base_torch"][split]["mAP_medium"]
        assert base_ir == pytest.approx(base_torch, abs=1e-3)
        assert ours["drop"][split] == pytest.approx(100 * (base_ir - ours[split]["mAP_medium"]))
    assert (out / "ir" / f"{ours['name']}.bin").stat().st_size == ours["ir_bin_bytes"]
    assert json.loads((out / "configs" / f"{ours['name']}.json").read_text())["compression"][3]["bits"] == 5
    stored = load_archive(out / "archives" / f"{ours['name']}.dca")
    assert len(stored["netvlad.centroids"].unique()) <= 32  # NetVLAD's centroids share a 5-bit codebook too
    # compressed rows keep their floats as float16 values (2 bytes in the archive); the FP32 base does not
    scale = stored["backbone.features.1.weight"]
    assert torch.equal(scale, scale.half().float())
    base_scale = load_archive(out / "archives" / "base_fp32.dca")["backbone.features.1.weight"]
    assert not torch.equal(base_scale, base_scale.half().float())
