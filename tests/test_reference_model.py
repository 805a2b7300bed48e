"""benchmarks/reference_model.py: a 2-step run at 4x16x16 writes its JSON and model, and --eval-only reuses them."""

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow  # ~40 s on a loaded 2-core machine (imports, 2 steps, 2 videos x 2 steps, twice)
def test_two_step_run_writes_results_and_eval_only_reuses_the_model(tmp_path, monkeypatch):
    sys.path.insert(0, str(BENCHMARKS))
    import common
    import reference_model

    from diffusers_hpdm.data import generate_dataset

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    data = generate_dataset(tmp_path / "data", num_videos=4)
    out = tmp_path / "model"
    argv = ["--size", "4", "16", "16", "--steps", "2", "--batch-size", "2", "--block-out-channels", "16", "32"]
    argv += ["--data-dir", str(data), "--clip-cache", str(tmp_path), "--output-dir", str(out)]
    argv += ["--num-videos", "2", "--num-inference-steps", "2", "--name", "test"]
    assert reference_model.main(argv) == 0
    result = json.loads((tmp_path / "results" / "reference_model_4x16x16_test.json").read_text())
    assert {"machine", "size", "model", "training", "evaluation"} <= result.keys()
    assert result["training"]["steps"] == 2 and result["training"]["train_seconds"] > 0
    assert result["model"]["block_out_channels"] == [16, 32]
    evaluation = result["evaluation"]
    for key in ("accuracy", "real_clips_accuracy", "real_clips_box_filtered_accuracy"):
        assert set(evaluation[key]) == {"colour", "shape", "direction", "speed", "all"}
        assert all(0.0 <= v <= 1.0 for v in evaluation[key].values())
    assert {p.name for p in out.iterdir()} == {"unet", "scheduler", "tokenizer", "text_encoder", "training.json"}

    eval_argv = ["--size", "4", "16", "16", "--eval-only", "--output-dir", str(out), "--data-dir", str(data)]
    assert (
        reference_model.main([*eval_argv, "--num-videos", "2", "--num-inference-steps", "2", "--name", "test2"]) == 0
    )
    again = json.loads((tmp_path / "results" / "reference_model_4x16x16_test2.json").read_text())
    assert again["training"]["steps"] == 2
    assert again["evaluation"]["accuracy"] == evaluation["accuracy"]  # same EMA weights, same seeds
