"""Saved pipelines that load with plain ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``.

diffusers resolves a pipeline's ``_class_name`` (``model_index.json``) in two ways only
(``diffusers.pipelines.pipeline_loading_utils._get_pipeline_class``): a string is looked up as an attribute of the
``diffusers`` module, where no out-of-tree class can be; a list ``[module, class]`` names a ``module.py`` file in
the folder (or Hub repository), which diffusers imports as custom code, and only with ``trust_remote_code=True``.
That is the supported way for an out-of-tree pipeline, so ``save_pretrained`` writes it: ``_class_name =
["hpdm_pipeline", "HierarchicalPatchPipeline"]`` and an ``hpdm_pipeline.py`` of a few lines that imports the class
from the installed ``diffusers_hpdm`` package (no model code travels with the weights; the class diffusers returns
*is* ``diffusers_hpdm.HierarchicalPatchPipeline``).

``HierarchicalPatchPipeline.from_pretrained`` reads the same folder without running the file: asked for by its own
class, a ``[hpdm_pipeline, name]`` ``_class_name`` is read as ``name`` before diffusers resolves it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LOADER_MODULE = "hpdm_pipeline"
PIPELINE_CLASS = "HierarchicalPatchPipeline"
INSTALL = "pip install -c requirements.lock . in the root of a diffusers_hpdm checkout (it is not on PyPI)"

LOADER_SOURCE = '''"""Loads `diffusers_hpdm.HierarchicalPatchPipeline` for `DiffusionPipeline.from_pretrained(...,
trust_remote_code=True)`. Written by `HierarchicalPatchPipeline.save_pretrained`; it holds no model code."""

try:
    from diffusers_hpdm import HierarchicalPatchPipeline
except ImportError as error:  # the weights need the package's model code
    raise ImportError(
        "This pipeline needs the `diffusers_hpdm` package ({version}): {install}"
    ) from error

__all__ = ["HierarchicalPatchPipeline"]
'''


def write_loader(save_directory: str | os.PathLike) -> Path:
    """Write ``save_directory/hpdm_pipeline.py`` (see the module docstring) and return its path."""
    from .. import __version__

    path = Path(save_directory) / f"{LOADER_MODULE}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(LOADER_SOURCE.format(version=__version__, install=INSTALL), encoding="utf-8")
    return path


class HubLoadingMixin:
    """``save_pretrained`` / ``from_pretrained`` hooks of ``HierarchicalPatchPipeline`` (module docstring)."""

    def _writes_loader(self) -> bool:
        # Only the package's own class can be imported by the loader file; subclasses save the plain form.
        cls = type(self)
        return cls.__name__ == PIPELINE_CLASS and cls.__module__.startswith("diffusers_hpdm.")

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """diffusers' ``save_pretrained``, plus ``hpdm_pipeline.py`` so that ``DiffusionPipeline.from_pretrained(
        save_directory, trust_remote_code=True)`` loads it (written first: ``push_to_hub=True`` uploads it too)."""
        if self._writes_loader():
            write_loader(save_directory)
        super().save_pretrained(save_directory, *args, **kwargs)

    def to_json_string(self) -> str:
        """The config as diffusers writes it, with ``_class_name = ["hpdm_pipeline", "HierarchicalPatchPipeline"]``."""
        text = super().to_json_string()
        if not self._writes_loader():
            return text
        config = json.loads(text)
        config["_class_name"] = [LOADER_MODULE, PIPELINE_CLASS]
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict:
        # Read by `load_config` (local folders) and `download` (Hub ids) before the class is resolved: the caller's
        # own class needs no custom code, so the list form becomes the class name it stands for.
        config = super()._dict_from_json_file(json_file)
        name = config.get("_class_name")
        if isinstance(name, list) and len(name) == 2 and name[0] == LOADER_MODULE:
            config["_class_name"] = name[1]
        return config
