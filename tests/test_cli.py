"""The ``hpdm`` command line: outputs that can be read back, and errors that name the fix."""

import inspect
import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image
from test_pipeline import PROMPTS, tiny_model

from diffusers_hpdm import HierarchicalPatchPipeline, HPDMScheduler
from diffusers_hpdm.cli import build_parser, main
from diffusers_hpdm.pipelines.tiling import BLENDINGS
from diffusers_hpdm.text import build_tiny_text_encoder, build_word_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = build_word_tokenizer(PROMPTS)
    pipe = HierarchicalPatchPipeline(
        tiny_model(), HPDMScheduler(level_growth=(1, 2, 2)), build_tiny_text_encoder(tok, 32), tok
    )
    path = tmp_path_factory.mktemp("model")
    pipe.save_pretrained(path)
    return path


def generate(model_dir, out, *extra):
    return main(["generate", PROMPTS[0], "--model", str(model_dir), "--out", str(out), "--steps", "2", *extra])


def test_generate_gif_and_mp4_with_every_level_on_the_contact_sheet(model_dir, tmp_path, capsys):
    """The file type follows the extension; the video has the model's final size; the contact sheet has one row per
    level (2 px padding around 4 frames of the finest size); the same seed gives the same frames."""
    gif, sheet = tmp_path / "v.gif", tmp_path / "levels.png"
    assert generate(model_dir, gif, "--contact-sheet", str(sheet), "--seed", "3") == 0
    frames = iio.imread(gif, index=None)
    assert frames.shape == (2, 32, 32, 3)  # 2x8x8 patches, growth (1, 2, 2), 3 levels
    w, h = Image.open(sheet).size  # 3 rows (levels) x 2 frames, each scaled to 32x32, 2 px padding
    assert (w, h) == (2 * (32 + 2) + 2, 3 * (32 + 2) + 2)
    mp4 = tmp_path / "v.mp4"
    assert generate(model_dir, mp4, "--seed", "3", "--tile-batch-size", "1", "--overlap", "hw") == 0
    assert iio.imread(mp4, index=None, plugin="pyav").shape[:3] == (2, 32, 32)
    assert "wrote" in capsys.readouterr().out
    again = tmp_path / "again.gif"
    generate(model_dir, again, "--seed", "3")
    np.testing.assert_array_equal(iio.imread(again, index=None), frames)


def test_generate_stops_early_with_num_levels(model_dir, tmp_path):
    out = tmp_path / "coarse.gif"
    assert generate(model_dir, out, "--num-levels", "2") == 0
    assert iio.imread(out, index=None).shape == (2, 16, 16, 3)


def test_generate_super_resolves_a_given_clip_from_a_file_or_a_folder_of_frames(model_dir, tmp_path):
    """``--video`` at level 0's size (a gif, or the same frames as a folder of PNGs) gives the final size, the
    same from both; a clip of no level's size exits with the sizes to resize to."""
    from diffusers_hpdm.data import read_frames

    coarse = tmp_path / "coarse.gif"
    assert generate(model_dir, coarse, "--num-levels", "1") == 0
    from_gif = tmp_path / "sr.gif"
    assert generate(model_dir, from_gif, "--video", str(coarse)) == 0
    assert iio.imread(from_gif, index=None).shape == (2, 32, 32, 3)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(read_frames(coarse)):
        iio.imwrite(folder / f"{i:03d}.png", frame)
    from_pngs = tmp_path / "sr_png.gif"
    assert generate(model_dir, from_pngs, "--video", str(folder)) == 0
    np.testing.assert_array_equal(iio.imread(from_pngs, index=None), iio.imread(from_gif, index=None))
    bad = tmp_path / "bad"
    bad.mkdir()
    iio.imwrite(bad / "0.png", np.zeros((12, 12, 3), np.uint8))
    with pytest.raises(SystemExit, match=r"2x8x8, 2x16x16, 2x32x32\. Resize the clip"):
        generate(model_dir, tmp_path / "x.gif", "--video", str(bad))


def test_detect_prints_what_the_detector_reads_next_to_the_prompt(model_dir, tmp_path, capsys):
    generate(model_dir, tmp_path / "v.gif", "--detect")
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("detector")][0]
    assert "(asked red)" in line and "(asked circle)" in line and "(asked left)" in line


@pytest.mark.parametrize(
    "override, message",
    [
        ({"--out": "video.avi"}, "must end in .mp4 or .gif"),
        ({"--model": "does/not/exist"}, "is not a folder"),
        ({"--height": "13"}, "height"),
        ({"--overlap": "x"}, "overlap"),
    ],
)
def test_bad_arguments_exit_with_a_message_naming_the_fix(model_dir, tmp_path, override, message):
    options = {"--model": str(model_dir), "--out": str(tmp_path / "v.gif"), "--steps": "1", **override}
    with pytest.raises(SystemExit, match=message):
        main(["generate", "a red circle", *[x for kv in options.items() for x in kv]])


@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_blending_choices_are_the_pipelines(command):
    """The CLI spells the blending names without importing torch (``hpdm --help`` stays fast); they must be exactly the
    pipeline's, and the default the pipeline's default."""
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    blending = next(a for a in sub._actions if a.dest == "blending")
    assert sorted(blending.choices) == sorted(BLENDINGS)
    assert blending.default == inspect.signature(HierarchicalPatchPipeline.__call__).parameters["blending"].default


def test_make_dataset_writes_a_loadable_folder(tmp_path, capsys):
    from diffusers_hpdm.data import load_video_dataset

    assert main(["make-dataset", str(tmp_path / "d"), "--num-videos", "3", "--num-frames", "4"]) == 0
    ds = load_video_dataset(tmp_path / "d", num_frames=4, height=64, width=64)
    assert len(ds) == 3 and ds[0]["video"].shape == (3, 4, 64, 64)
    assert torch.is_tensor(ds[0]["video"])


def test_evaluate_reports_the_real_clips_next_to_the_model(model_dir, tmp_path, capsys):
    """``hpdm evaluate`` writes a report whose ``real_clips`` section scores the domain's own clips of the same
    prompts with the same metrics (the detector's ceiling, the seam score's floor), and the scores of the model's
    videos do not depend on how the prompts are batched (video ``i`` comes from seed ``seed + i`` alone)."""
    from diffusers_hpdm.evaluation import high_frequency_energy, prompt_following_accuracy, seam_score, tile_edges
    from diffusers_hpdm.evaluation.run import evaluate_pipeline, evaluation_prompts, real_clips

    out = tmp_path / "report.json"
    argv = ["evaluate", "--model", str(model_dir), "--num-videos", "3", "--steps", "2", "--seed", "5"]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    summary, prompts = report["summary"], evaluation_prompts(3)
    assert [v["prompt"] for v in report["videos"]] == prompts and [v["seed"] for v in report["videos"]] == [5, 6, 7]
    clips = real_clips(prompts, (2, 32, 32), seed=5)
    assert clips.shape == (3, 2, 32, 32, 3) and clips.dtype == np.uint8
    reference = summary["real_clips"]
    assert reference["accuracy"] == prompt_following_accuracy(list(clips), prompts)
    assert reference["accuracy"]["colour"] == 1.0  # the detector reads the domain's own clips
    borders = (tile_edges(32, 8, 4), tile_edges(32, 8, 4))
    assert reference["seam_score"] == np.mean([seam_score(v, borders) for v in clips])  # the same computation
    assert summary["seam_score"] is not None and len(summary["accuracy_per_level"]) == 3
    per_level = summary["seam_score_per_level"]  # level 0 is one tile; the finest level is the headline number
    assert per_level[0] is None and per_level[1] is not None and per_level[2] == summary["seam_score"]
    assert reference["high_frequency_energy"] == np.mean([high_frequency_energy(v) for v in clips])
    assert summary["grain"] > 0
    assert real_clips(["a red thing"], (2, 32, 32)) is None  # not every attribute named: no reference
    pipe = HierarchicalPatchPipeline.from_pretrained(model_dir)
    one_by_one = evaluate_pipeline(pipe, num_videos=3, num_inference_steps=2, seed=5, batch_size=1)["summary"]
    assert one_by_one["accuracy_per_level"] == summary["accuracy_per_level"]
    for key in ("seam_score", "level_psnr", "temporal_flicker", "border_energy_profile"):  # float32 batching noise
        assert one_by_one[key] == pytest.approx(summary[key], rel=1e-5, abs=1e-3 if "profile" in key else 1e-12)
