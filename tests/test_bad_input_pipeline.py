"""Bad input to ``HierarchicalPatchPipeline``: every case raises a ``ValueError`` whose message names the argument
(issue 23). Tiny random models: no case runs a denoising step unless the bad value only shows up inside the loop
(a callback)."""

import logging
import shutil

import numpy as np
import pytest
import torch
from test_pipeline import PROMPTS, pipe_factory, run, tiny_model

from diffusers_hpdm import HierarchicalPatchPipeline, HPDMScheduler
from diffusers_hpdm.pipelines.checksums import CHECKSUMS_NAME, verify_checksums
from diffusers_hpdm.pipelines.vocabulary import unknown_words

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def pipe():
    return pipe_factory(PROMPTS)


def embeds(batch=1, tokens=4, width=32):
    return torch.randn(batch, tokens, width, generator=torch.Generator().manual_seed(0))


with_nan = embeds()
with_nan[0, 1, 2] = NAN

# (keyword arguments, the argument the message must name)
BAD_CALLS = [
    ({"guidance_scale": NAN}, "guidance_scale"),
    ({"guidance_scale": INF}, "guidance_scale"),
    ({"guidance_scale": -INF}, "guidance_scale"),
    ({"guidance_scale": [3.0, NAN, 3.0]}, "guidance_scale"),
    ({"guidance_scale": []}, "guidance_scale"),
    ({"guidance_scale": "3"}, "guidance_scale"),
    ({"context_sigma": NAN}, "context_sigma"),
    ({"context_sigma": INF}, "context_sigma"),
    ({"context_sigma": 0.0}, "context_sigma"),
    ({"level_steps": [2.7, 2, 2]}, "level_steps"),
    ({"level_steps": [2, 0, 1]}, "level_steps"),
    ({"level_steps": []}, "level_steps"),
    ({"level_steps": 3}, "level_steps"),
    ({"num_inference_steps": 2.5}, "num_inference_steps"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"num_inference_steps": 10**6}, "num_inference_steps"),
    ({"num_inference_steps": 10**9}, "num_inference_steps"),
    ({"num_inference_steps": True}, "num_inference_steps"),
    ({"max_sequence_length": 0}, "max_sequence_length"),
    ({"max_sequence_length": -5}, "max_sequence_length"),
    ({"max_sequence_length": 8.5}, "max_sequence_length"),
    ({"num_videos_per_prompt": 0}, "num_videos_per_prompt"),
    ({"num_videos_per_prompt": 1.5}, "num_videos_per_prompt"),
    ({"tile_batch_size": 0}, "tile_batch_size"),
    ({"generator": 42}, "generator"),
    ({"generator": np.random.default_rng(0)}, "generator"),
    ({"generator": [None]}, "generator"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, 2]}, "prompt"),
    ({"prompt": ["a red circle", None]}, "prompt"),
    ({"prompt": 7}, "prompt"),
    ({"negative_prompt": []}, "negative_prompt"),
    ({"negative_prompt": [3]}, "negative_prompt"),
    ({"negative_prompt": ["a", "b"]}, "negative"),  # 2 negatives for 1 prompt
    ({"prompt": None, "prompt_embeds": with_nan}, "prompt_embeds"),
    ({"prompt": None, "prompt_embeds": embeds(width=16)}, "prompt_embeds"),
    ({"prompt": None, "prompt_embeds": embeds()[0]}, "prompt_embeds"),
    ({"prompt": None, "prompt_embeds": embeds().numpy()}, "prompt_embeds"),
    ({"prompt": None, "prompt_embeds": torch.ones(1, 4, 32, dtype=torch.long)}, "prompt_embeds"),
    ({"negative_prompt_embeds": embeds(batch=2)}, "negative_prompt_embeds"),  # 1 text prompt, negatives of batch 2
    ({"negative_prompt_embeds": with_nan}, "negative_prompt_embeds"),
    ({"prompt": None, "prompt_embeds": embeds(), "prompt_attention_mask": torch.ones(1, 5)}, "prompt_attention_mask"),
    ({"prompt": None, "prompt_embeds": embeds(), "prompt_attention_mask": torch.ones(2, 4)}, "prompt_attention_mask"),
    ({"prompt": None, "prompt_embeds": embeds(), "prompt_attention_mask": [1, 1, 1, 1]}, "prompt_attention_mask"),
    ({"prompt_attention_mask": torch.ones(1, 4)}, "prompt_attention_mask"),  # a mask without prompt_embeds
    (
        {"negative_prompt_embeds": embeds(), "negative_prompt_attention_mask": torch.full((1, 4), 2)},
        "negative_prompt_attention_mask",
    ),
    ({"callback_on_step_end": "print"}, "callback_on_step_end"),
    ({"output_type": "mp4"}, "output_type"),
    ({"overlap_axes": "hw"}, "overlap_axes"),
    ({"height": 13}, "height"),
    ({"num_levels": 0}, "num_levels"),
]


@pytest.mark.parametrize("kwargs, name", BAD_CALLS, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD_CALLS)])
def test_bad_call_raises_a_value_error_naming_the_argument(pipe, kwargs, name):
    with pytest.raises(ValueError, match=name):
        run(pipe, **kwargs)


def test_class_labels_must_be_integers():
    class_pipe = HierarchicalPatchPipeline(tiny_model(text_embed_dim=None, num_classes=4), HPDMScheduler())
    for labels in ([1.7], torch.tensor([1.5]), [], [True]):
        with pytest.raises(ValueError, match="class_labels"):
            class_pipe(class_labels=labels, num_inference_steps=1)


@pytest.mark.parametrize(
    "returned, message",
    [(None, "must return a dict"), ({"latents": torch.zeros(1, 3, 2, 4, 4)}, "keep the canvas shape")],
)
def test_a_callback_returning_garbage_is_named(pipe, returned, message):
    with pytest.raises(ValueError, match=rf"callback_on_step_end.*{message}"):
        run(pipe, callback_on_step_end=lambda *a: returned)


def test_a_callback_returning_nan_latents_is_named(pipe):
    def poison(p, i, t, kw):
        return {"latents": torch.full_like(kw["latents"], NAN)}

    with pytest.raises(ValueError, match="callback_on_step_end.*NaN"):
        run(pipe, callback_on_step_end=poison)


def test_unknown_words_are_named_in_a_warning_and_known_prompts_stay_silent(pipe, caplog):
    """The word-level tokenizer maps every unknown word to one token: the warning lists them (in order, once)."""
    assert unknown_words(pipe.tokenizer, "a robot planting a red tree robot") == ["robot", "planting", "tree"]
    caplog.set_level(logging.WARNING)
    run(pipe, prompt="a robot planting a tree", num_inference_steps=1, num_levels=1)
    warning = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(warning) == 1 and "'robot', 'planting', 'tree'" in warning[0] and "`prompt`" in warning[0]
    caplog.clear()
    run(pipe, prompt=PROMPTS[0], num_inference_steps=1, num_levels=1)
    assert not [r for r in caplog.records if "does not know" in r.getMessage()]


def test_truncated_prompts_are_named_in_a_warning(pipe, caplog):
    caplog.set_level(logging.WARNING)
    run(pipe, prompt=" ".join([PROMPTS[0]] * 4), num_inference_steps=1, num_levels=1, max_sequence_length=6)
    assert any("max_sequence_length=6" in r.getMessage() for r in caplog.records)


def test_corrupted_weights_are_named_and_intact_ones_load_unchanged(pipe, tmp_path):
    """save_pretrained writes checksums; overwriting tensor bytes (header intact) raises naming the file on load;
    the intact copy loads with weights equal to the saved ones."""
    pipe.save_pretrained(tmp_path / "good")
    assert verify_checksums(tmp_path / "good") is True
    assert (tmp_path / "good" / CHECKSUMS_NAME).is_file()
    loaded = HierarchicalPatchPipeline.from_pretrained(tmp_path / "good")
    for a, b in zip(loaded.transformer.state_dict().values(), pipe.transformer.state_dict().values()):
        assert torch.equal(a, b)
    shutil.copytree(tmp_path / "good", tmp_path / "bad")
    weights = tmp_path / "bad" / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)  # the last tensor's bytes; the header is untouched
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"Corrupted weights.*transformer/diffusion_pytorch_model\.safetensors"):
        HierarchicalPatchPipeline.from_pretrained(tmp_path / "bad")
    HierarchicalPatchPipeline.from_pretrained(tmp_path / "bad", verify_checksums=False)  # the user's explicit choice
    (tmp_path / "bad" / CHECKSUMS_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=CHECKSUMS_NAME):
        HierarchicalPatchPipeline.from_pretrained(tmp_path / "bad")


def test_the_bundled_model_carries_checksums_that_match_its_weights():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "models" / "hpdm-shapes-demo"
    assert verify_checksums(folder) is True
    card = (folder / "README.md").read_text()
    assert "## What the model knows" in card and "checksums.json" in card and "triangle" in card


@pytest.mark.parametrize(
    "kwargs, name",
    [({"num_videos": 0}, "num_videos"), ({"batch_size": 0}, "batch_size"), ({"prompts": []}, "prompts")],
)
def test_evaluate_pipeline_rejects_empty_runs(pipe, kwargs, name):
    from diffusers_hpdm.evaluation.run import evaluate_pipeline

    with pytest.raises(ValueError, match=f"`{name}`"):
        evaluate_pipeline(pipe, **{"num_inference_steps": 1, **kwargs})
