"""``examples/train_t2v.py`` with diffusers' training-script conventions: LoRA mode (``--rank``), Hub-style datasets
(``--dataset_name``, ``--video_column``, ``--caption_column``) and validation videos logged to the trackers."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.tracking import GeneralTracker
from conftest import assert_close_rounding, randomize_, rounding_atol, transformer_depth
from safetensors.torch import load_file

from diffusers_hpdm import HierarchicalPatchPipeline
from diffusers_hpdm.data import load_hub_video_dataset
from diffusers_hpdm.training import log_videos
from diffusers_hpdm.training.trackers import contact_sheet, encode_gif

ROOT = Path(__file__).resolve().parents[1]
MICRO = dict(
    patch_size=[2, 8, 8], num_levels=2, tokenizer_patch=[1, 4, 4], token_dim=16, latent_dim=32, num_latents=8,
    num_blocks=2, num_compute_layers=1, num_heads=2, levels_per_block=[1, 2], text_embed_dim=16,
)  # fmt: skip


def _run(script, out, *extra, data=None):
    torch.set_num_threads(1)
    args = [
        "--video_size", "4", "16", "16", "--model_overrides", json.dumps(MICRO), "--output_dir", str(out),
        "--train_batch_size", "2", "--seed", "0", "--logging_steps", "1", "--validation_prompts",
        "--checkpoints_total_limit", "10", *(["--train_data_dir", str(data)] if data else []), *extra,
    ]  # fmt: skip
    script.main(script.parse_args(args))


# ------------------------------------------------------------------------------------------------------------------
# LoRA mode
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_pipeline(train_script, micro_data, tmp_path_factory):
    """A saved pipeline whose transformer has random weights everywhere (a 1-step run's output head is still ~0,
    which would hide every adapter behind a zero readout)."""
    out = tmp_path_factory.mktemp("base")
    _run(train_script, out, "--max_train_steps", "1", "--checkpointing_steps", "1", data=micro_data)
    pipe = HierarchicalPatchPipeline.from_pretrained(out)
    randomize_(pipe.transformer, std=0.2)
    pipe.save_pretrained(out)  # the whole pipeline: checksums.json must record the new weights
    return out


def test_lora_mode_trains_only_the_adapter_and_the_saved_adapter_reloads(
    train_script, micro_data, base_pipeline, tmp_path
):
    out = tmp_path / "lora"
    _run(
        train_script, out, "--pretrained_base", str(base_pipeline), "--rank", "4", "--max_train_steps", "3",
        "--checkpointing_steps", "3", "--learning_rate", "1e-2", data=micro_data,
    )  # fmt: skip
    adapter = load_file(out / "pytorch_lora_weights.safetensors")
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in adapter} >= {"to_q", "to_k", "to_v"}
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # the adapter learned something
    assert not (out / "model_index.json").exists() and "load_lora_adapter" in (out / "README.md").read_text()
    # The checkpoint's model state: every base weight is the base's, bit for bit; only adapters moved.
    state = load_file(out / "checkpoint-3" / "model.safetensors")
    base = load_file(base_pipeline / "transformer" / "diffusion_pytorch_model.safetensors")
    base_keys = {k.replace(".base_layer", ""): k for k in state if "lora_" not in k}
    assert set(base_keys) == set(base)
    assert all(torch.equal(state[base_keys[k]], base[k]) for k in base)
    assert all(torch.equal(state[k], adapter[k.replace(".default", "")]) for k in state if "lora_" in k)
    # Base + adapter, loaded as the model card says, gives the trained model's output; the base alone does not.
    pipe = HierarchicalPatchPipeline.from_pretrained(base_pipeline)
    plain = HierarchicalPatchPipeline.from_pretrained(base_pipeline).transformer
    pipe.transformer.load_lora_adapter(out, prefix=None, weight_name="pytorch_lora_weights.safetensors")
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 2, 3, 2, 8, 8, generator=g), torch.randn(1, 2, generator=g)
    boxes = torch.tensor([[[0.0, 0, 0, 1, 1, 1], [0.0, 0, 0, 0.5, 0.5, 0.5]]])
    cond = dict(encoder_hidden_states=torch.randn(1, 4, 16, generator=g), encoder_attention_mask=torch.ones(1, 4))
    with torch.no_grad():
        with_lora = pipe.transformer(x, t, boxes, **cond).sample
        without = plain(x, t, boxes, **cond).sample
        scaled_off = pipe.transformer(x, t, boxes, **cond, attention_kwargs={"scale": 0.0}).sample
    # The adapter moves the output by far more than rounding; scaled by 0 it is the base model, up to the rounding
    # of peft's wrapped layers (another kernel path through the base layer) at the model's depth.
    depth = transformer_depth(MICRO)
    assert (with_lora - without).abs().max() > 1000 * rounding_atol(without.abs().max(), depth)
    assert_close_rounding(scaled_off, without, depth)


def test_lora_mode_needs_a_pretrained_base(train_script):
    with pytest.raises(SystemExit):
        train_script.parse_args(["--rank", "4"])
    args = train_script.parse_args(["--rank", "4", "--pretrained_base", "x"])
    assert args.learning_rate == 1e-4 and args.lora_alpha == 4.0
    assert train_script.parse_args([]).learning_rate == 5e-3  # full training keeps the paper's LAMB rate


# ------------------------------------------------------------------------------------------------------------------
# Hub-style datasets
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_files(micro_data, tmp_path_factory):
    """The micro dataset as a folder of data files read by `datasets.load_dataset` (as a Hub dataset is), with
    diffusers-style custom column names."""
    root = tmp_path_factory.mktemp("hub")
    shutil.copytree(micro_data / "videos", root / "videos")
    rows = [json.loads(line) for line in (micro_data / "metadata.jsonl").read_text().splitlines() if line]
    with open(root / "train.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"clip": r["file_name"], "prompt": r["text"], "other": 1}) + "\n")
    return root, rows


def test_hub_dataset_reads_the_named_columns(data_files, micro_data):
    from diffusers_hpdm.data import load_video_dataset

    root, rows = data_files
    hub = load_hub_video_dataset(str(root), video_column="clip", caption_column="prompt", num_frames=4, height=8,
                                 width=8, random_temporal_crop=False)  # fmt: skip
    ref = load_video_dataset(micro_data, num_frames=4, height=8, width=8, random_temporal_crop=False)
    assert len(hub) == len(rows)
    for i in range(len(rows)):
        a, b = hub[i], ref[i]
        assert a["text"] == rows[i]["text"] == b["text"] and torch.equal(a["video"], b["video"])
    with pytest.raises(ValueError, match="no media column: add `video`"):
        load_hub_video_dataset(str(root), video_column="video", caption_column="prompt")
    with pytest.raises(ValueError, match="add a `caption` column"):
        load_hub_video_dataset(str(root), video_column="clip", caption_column="caption")


def test_training_script_takes_dataset_name_and_columns(train_script, data_files, tmp_path):
    root, _ = data_files
    out = tmp_path / "out"
    _run(
        train_script, out, "--dataset_name", str(root), "--video_column", "clip", "--caption_column", "prompt",
        "--max_train_steps", "1", "--checkpointing_steps", "1",
    )  # fmt: skip
    vocab = json.loads((out / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert "circle" in vocab or "square" in vocab or "triangle" in vocab  # the tokenizer was built from `prompt`


# ------------------------------------------------------------------------------------------------------------------
# Trackers
# ------------------------------------------------------------------------------------------------------------------


def few_colour_video(seed: int = 0, frames: int = 5) -> np.ndarray:
    """uint8 [T, H, W, 3] with 8 colours (a GIF stores it losslessly)."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (8, 3), dtype=np.uint8)
    return palette[rng.integers(0, 8, (frames, 12, 16))]


class RecordingTracker(GeneralTracker):
    """A custom tracker with ``log_images`` (e.g. an in-house dashboard)."""

    name = "recording"
    requires_logging_directory = False

    def __init__(self):
        super().__init__()
        self.images = []

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values):
        pass

    def log(self, values, step=None, **kwargs):
        pass

    def log_images(self, values, step=None, **kwargs):
        self.images.append((step, values))


def _read_tensorboard_images(logdir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"images": 0})
    events.Reload()
    return {tag: events.Images(tag) for tag in events.Tags()["images"]}


def test_log_videos_writes_tensorboard_gifs_and_custom_tracker_images(tmp_path):
    from accelerate import Accelerator
    from PIL import Image, ImageSequence

    custom = RecordingTracker()
    accelerator = Accelerator(cpu=True, log_with=["tensorboard", custom], project_dir=tmp_path)
    accelerator.init_trackers("run")
    videos = [few_colour_video(0), few_colour_video(1)]
    assert log_videos(accelerator.trackers, videos, ["a", "b"], step=7) == ["tensorboard", "recording"]
    accelerator.end_training()
    images = _read_tensorboard_images(tmp_path / "run")
    assert sorted(images) == ["validation/00", "validation/01"]
    for tag, video in zip(sorted(images), videos):
        (event,) = images[tag]
        assert event.step == 7 and (event.height, event.width) == video.shape[1:3]
        gif = Image.open(__import__("io").BytesIO(event.encoded_image_string))
        frames = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)])
        assert np.array_equal(frames, video)  # 8 colours: the GIF is lossless
    (step, logged), = custom.images  # fmt: skip
    assert step == 7 and np.array_equal(logged["validation/01"], contact_sheet(videos[1]))
    assert encode_gif(videos[0]) == encode_gif(videos[0])  # deterministic
    with pytest.raises(ValueError, match="one caption per video"):
        log_videos([], videos, ["a"], step=0)


def test_training_script_logs_validation_videos_to_tensorboard(train_script, micro_data, tmp_path):
    out = tmp_path / "tb"
    _run(
        train_script, out, "--max_train_steps", "2", "--checkpointing_steps", "2", "--report_to", "tensorboard",
        "--validation_prompts", "a red circle", "--validation_steps", "1", "--validation_inference_steps", "2",
        data=micro_data,
    )  # fmt: skip
    images = _read_tensorboard_images(out / "logs" / "hpdm")
    assert list(images) == ["validation/00"]
    assert [e.step for e in images["validation/00"]] == [1, 2]  # every --validation_steps, and at the end
    assert images["validation/00"][0].height == 16 and images["validation/00"][0].width == 16
