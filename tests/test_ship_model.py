"""scripts/ship_model.py: its last stage (targets, model card, install) on made-up scores.

The script's training stage takes hours; these tests check what it does once training is
done, so that the end of a multi-session run cannot fail on a bug in the bookkeeping.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ship_model.py"


@pytest.fixture()
def ship(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("ship_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data, run, weights = tmp_path / "data", tmp_path / "run", tmp_path / "weights"
    (data / "pairs-all").mkdir(parents=True)
    run.mkdir()
    weights.mkdir()
    options = {"pick": "all-pairs", "min_gap": 2.0}
    (data / "pairs-all" / "manifest.json").write_text(json.dumps({"options": options}))
    (run / "split.json").write_text(json.dumps({"train": ["a", "b", "c"], "val": ["d"]}))
    monkeypatch.setattr(module, "DATA", data)
    monkeypatch.setattr(module, "RUN", run)
    monkeypatch.setattr(module, "WEIGHTS_DIR", weights)
    return module


def _scores(psnr: float, ssim: float, mef: float, qabf: float, tmqi: float) -> dict:
    noref = {"EN": 7.0, "SD": 60.0, "SF": 14.0, "AG": 4.0, "EI": 40.0}
    return {"PSNR": psnr, "SSIM": ssim, "MEF-SSIM": mef, "QABF": qabf, "TMQI": tmqi, **noref}


def _summary() -> dict:
    return {
        "steps": 9200,
        "params": 324452,
        "model": {"width": 32, "d_state": 8},
        "wall_seconds": 36000.0,
        "clip_weight_used": 0.0,
        "config": {
            "model": {"name": "textmef-c32"},
            "data": {"crop": 160, "whole_fraction": 0.25},
            "optim": {
                "batch_size": 8,
                "lr": 2e-4,
                "betas": [0.5, 0.999],
                "gamma": 0.1,
                "milestones": [0.5, 0.675],
            },
            "loss": {"mse": 1.0, "mef_ssim": 0.5, "ssim": 0.02, "colour": 0.0},
        },
    }


def test_targets_use_each_margin_over_mertens(ship):
    mertens = _scores(24.0, 0.87, 0.980, 0.72, 0.84)
    # Exactly at every margin: PSNR +2.5, SSIM +0, MEF-SSIM -0.005, QABF -0.01, TMQI +0.
    at_margin = _scores(26.5, 0.87, 0.975, 0.71, 0.84)
    sice = {"textmef": {"PSNR": 21.5}, "mertens": {"PSNR": 20.0}}
    rows = ship.check_targets({"textmef": at_margin, "mertens": mertens}, sice)
    assert [r[0] for r in rows] == [
        "PSNR",
        "SSIM",
        "MEF-SSIM",
        "QABF",
        "TMQI",
        "PSNR, SICE samples",
    ]
    assert all(row[4] for row in rows)

    just_below = _scores(26.49, 0.8699, 0.9749, 0.7099, 0.8399)
    sice_below = {"textmef": {"PSNR": 21.49}, "mertens": {"PSNR": 20.0}}
    rows = ship.check_targets({"textmef": just_below, "mertens": mertens}, sice_below)
    assert not any(row[4] for row in rows)


def test_model_card_states_recipe_time_and_every_target(ship):
    scores = {
        "textmef": _scores(23.1, 0.86, 0.975, 0.66, 0.85),
        "mertens": _scores(24.09, 0.8786, 0.9801, 0.7206, 0.8436),
    }
    sice = {"textmef": {"PSNR": 21.0}, "mertens": {"PSNR": 19.2}}
    targets = ship.check_targets(scores, sice)
    card = ship.model_card(_summary(), scores, sice, targets, "| ablation table |")
    assert "324,452 parameters" in card
    assert "9200 steps of batch 8" in card and "160 px" in card
    assert "10.0 h of training" in card
    assert "3 training triplets" in card
    assert '"pick": "all-pairs"' in card
    assert "| PSNR | 23.1000 | 24.0900 | ≥ 26.5900 | no |" in card
    assert "| PSNR, SICE samples | 21.0000 | 19.2000 | ≥ 20.7000 | yes |" in card
    assert "| ablation table |" in card


def test_install_replaces_weights_and_card_leaving_no_temporary_files(ship, tmp_path):
    (ship.WEIGHTS_DIR / "textmef.safetensors").write_bytes(b"old")
    new = tmp_path / "last.safetensors"
    new.write_bytes(b"new weights")
    ship.install(new, "# card\n")
    assert (ship.WEIGHTS_DIR / "textmef.safetensors").read_bytes() == b"new weights"
    assert (ship.WEIGHTS_DIR / "MODEL_CARD.md").read_text() == "# card\n"
    assert sorted(p.name for p in ship.WEIGHTS_DIR.iterdir()) == [
        "MODEL_CARD.md",
        "textmef.safetensors",
    ]
