"""Generic loading: a saved pipeline (and the bundled demo folder) loads with plain
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``, the way diffusers loads out-of-tree pipelines,
and gives the frames ``HierarchicalPatchPipeline.from_pretrained`` gives; the model card says how."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml
from conftest import TEST_THREADS
from diffusers import DiffusionPipeline
from diffusers.utils import dynamic_modules_utils
from test_pipeline import PROMPTS, pipe_factory

import diffusers_hpdm
from diffusers_hpdm import HierarchicalPatchPipeline, write_card_sample, write_model_card
from diffusers_hpdm.pipelines.hub_loading import LOADER_MODULE, write_loader

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "hpdm-shapes-demo"
DEMO_CALL = dict(num_inference_steps=4, num_levels=2, output_type="latent")  # levels 0-1 of the bundled model


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """diffusers copies remote code into HF_MODULES_CACHE: keep it inside the test's folder."""
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    return tmp_path / "modules"


@pytest.fixture(scope="module")
def pipe():
    return pipe_factory(PROMPTS)


def frames(pipe, prompt=PROMPTS[0], **kw):
    pipe.set_progress_bar_config(disable=True)
    kw = {"num_inference_steps": 2, "output_type": "latent", **kw}
    return pipe(prompt, generator=torch.Generator().manual_seed(0), **kw).frames


def test_save_pretrained_writes_what_diffusion_pipeline_needs(pipe, tmp_path, modules_cache):
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == [LOADER_MODULE, "HierarchicalPatchPipeline"]
    assert (tmp_path / "saved" / f"{LOADER_MODULE}.py").is_file()
    generic = DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    assert type(generic) is HierarchicalPatchPipeline  # the installed class itself, not a copy
    own = HierarchicalPatchPipeline.from_pretrained(tmp_path / "saved")  # no remote code needed
    ref = frames(pipe)
    assert torch.equal(frames(generic), ref) and torch.equal(frames(own), ref)
    # without trust_remote_code diffusers refuses, naming the flag
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(tmp_path / "saved")
    # a save of the loaded pipeline writes the same folder description
    generic.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "model_index.json").read_text())
    assert {k: v for k, v in again.items() if k != "_name_or_path"} == {
        k: v for k, v in index.items() if k != "_name_or_path"
    }


def test_bundled_folder_is_what_save_pretrained_writes(tmp_path):
    """The demo folder's model_index.json and loader file are exactly what ``save_pretrained`` writes today."""
    HierarchicalPatchPipeline.from_pretrained(DEMO).save_pretrained(tmp_path)
    ours, saved = (json.loads((d / "model_index.json").read_text()) for d in (DEMO, tmp_path))
    strip = lambda d: {k: v for k, v in d.items() if k not in ("_name_or_path", "_diffusers_version")}  # noqa: E731
    assert strip(ours) == strip(saved)
    assert (DEMO / f"{LOADER_MODULE}.py").read_text() == write_loader(tmp_path / "loader").read_text()


def test_bundled_folder_loads_generically_in_a_fresh_process(tmp_path):
    """A copy of the bundled folder, loaded by ``DiffusionPipeline.from_pretrained`` in a new interpreter (cwd
    outside the repository, empty module cache, only the installed packages on the path), gives the frames of
    ``HierarchicalPatchPipeline.from_pretrained`` here: the same kernels on the same inputs, bit for bit."""
    folder = tmp_path / "hpdm-shapes-demo"
    shutil.copytree(DEMO, folder)
    script = f"""
import numpy as np, torch
from diffusers import DiffusionPipeline
torch.set_num_threads({TEST_THREADS})
pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
assert type(pipe).__name__ == "HierarchicalPatchPipeline", type(pipe)
pipe.set_progress_bar_config(disable=True)
out = pipe({PROMPTS[0]!r}, generator=torch.Generator().manual_seed(0), **{DEMO_CALL!r}).frames
np.save("frames.npy", out.numpy())
"""
    package_root = str(Path(diffusers_hpdm.__file__).resolve().parents[1])  # what `pip install` would provide
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_"))},
        "PYTHONPATH": package_root,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, timeout=300)
    fresh = torch.from_numpy(np.load(tmp_path / "frames.npy"))
    own = HierarchicalPatchPipeline.from_pretrained(DEMO)
    assert torch.equal(fresh, frames(own, **DEMO_CALL))


def test_model_card_says_how_to_install_and_load_and_embeds_the_sample(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    out = pipe(PROMPTS[0], num_inference_steps=2, generator=torch.Generator().manual_seed(0), return_levels=True)
    files = write_card_sample([lv[0] for lv in out.levels], tmp_path, size=64)
    card = write_model_card(tmp_path, repo_id="me/hpdm-tiny", example_prompt=PROMPTS[0], sample=list(files),
                            sample_caption="seed 0")  # fmt: skip
    text = card.read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "text-to-video"
    assert "pip install -c requirements.lock ." in text
    assert 'DiffusionPipeline.from_pretrained("me/hpdm-tiny", trust_remote_code=True)' in text
    assert 'HierarchicalPatchPipeline.from_pretrained("me/hpdm-tiny")' in text
    assert "![sample](sample.gif)" in text and "![sample_levels](sample_levels.png)" in text
    gif = PIL.Image.open(tmp_path / "sample.gif")
    assert gif.n_frames == 2 and gif.size == (64, 64)  # the finest level (2 x 32 x 32), nearest 2x
    sheet = PIL.Image.open(tmp_path / "sample_levels.png")
    assert sheet.size == (2 + 2 * (32 + 2), 2 + 3 * (32 + 2))  # 2 frames per row, one row per level
    with pytest.raises(ValueError, match="sample"):
        write_model_card(tmp_path, sample="missing.gif")


def test_bundled_card_embeds_small_sample_files_and_the_generic_load_line():
    text = (DEMO / "README.md").read_text()
    assert 'DiffusionPipeline.from_pretrained("models/hpdm-shapes-demo", trust_remote_code=True)' in text
    assert "pip install -c requirements.lock ." in text
    embedded = ["sample.gif", "sample_levels.png"]
    assert all(f"]({name})" in text for name in embedded)
    assert sum((DEMO / name).stat().st_size for name in embedded) < 300_000
    gif = PIL.Image.open(DEMO / "sample.gif")
    assert gif.n_frames == 16 and gif.size == (128, 128)  # the 16x64x64 output, 2x
