"""SHA-256 checksums of a saved pipeline's weight files (``checksums.json``), written by ``save_pretrained`` and
verified by ``from_pretrained``.

A weight file whose header is intact but whose tensor bytes were overwritten (a bad copy, a disk error, a
partial download resumed wrongly) loads without complaint and generates noise. Its checksum does not match: loading
raises a `ValueError` naming the file. ``checksums.json``::

    {"algorithm": "sha256", "files": {"transformer/diffusion_pytorch_model.safetensors": "<hex>", ...}}

Folders saved before checksums existed (no ``checksums.json``) load as before. Hub downloads are verified by the
Hub client itself (LFS files carry their sha256); the check here covers local folders.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ..io_atomic import write_text_atomic

logger = logging.getLogger(__name__)

CHECKSUMS_NAME = "checksums.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weight_files(folder: str | os.PathLike) -> list[str]:
    """Weight files under ``folder`` (POSIX paths relative to it), sorted; hidden files and folders excluded."""
    root = Path(folder)
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES and not any(p.startswith(".") for p in rel.parts):
            found.append(rel.as_posix())
    return sorted(found)


def compute_checksums(folder: str | os.PathLike) -> dict[str, str]:
    """``{relative path: sha256 hex}`` of every weight file under ``folder``."""
    return {rel: sha256_file(Path(folder) / rel) for rel in weight_files(folder)}


def write_checksums(folder: str | os.PathLike) -> Path:
    """Write ``folder/checksums.json`` (atomically) for the weight files there; returns its path."""
    path = Path(folder) / CHECKSUMS_NAME
    files = compute_checksums(folder)
    write_text_atomic(path, json.dumps({"algorithm": "sha256", "files": files}, indent=1) + "\n")
    return path


def read_checksums(folder: str | os.PathLike) -> dict[str, str] | None:
    """The recorded checksums, ``None`` when the folder has no ``checksums.json``; a ``ValueError`` when it is
    malformed."""
    path = Path(folder) / CHECKSUMS_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if data.get("algorithm", "sha256") != "sha256" or not isinstance(files, dict):
            raise ValueError("not a sha256 file list")
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} is malformed ({error}); delete it and re-save the pipeline (save_pretrained writes it), or "
            "pass verify_checksums=False."
        ) from None
    return {str(k): str(v) for k, v in files.items()}


def verify_checksums(folder: str | os.PathLike) -> bool:
    """Check every weight file listed in ``folder/checksums.json``.

    Returns:
        ``True`` when every listed file matches, ``False`` when the folder has no ``checksums.json``.

    Raises:
        `ValueError`: a listed file is missing or its sha256 differs (the message names it and the fix).
    """
    recorded = read_checksums(folder)
    if recorded is None:
        logger.info("%s has no %s; weights not verified.", folder, CHECKSUMS_NAME)
        return False
    root = Path(folder)
    bad = []
    for rel, expected in recorded.items():
        path = root / rel
        if not path.is_file():
            bad.append(f"{rel} is missing")
        elif (actual := sha256_file(path)) != expected:
            bad.append(f"{rel} has sha256 {actual[:12]}... but {CHECKSUMS_NAME} records {expected[:12]}...")
    if bad:
        raise ValueError(
            f"Corrupted weights in {folder}: {'; '.join(bad)}. Re-download or re-save the model (or pass "
            "verify_checksums=False to load it anyway)."
        )
    unlisted = sorted(set(weight_files(folder)) - set(recorded))
    if unlisted:
        logger.warning("%s: weight files not in %s (not verified): %s", folder, CHECKSUMS_NAME, unlisted)
    return True


class ChecksumMixin:
    """``save_pretrained`` also writes ``checksums.json``; ``from_pretrained`` of a local folder verifies it first
    (``verify_checksums=False`` skips that)."""

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        push_to_hub = kwargs.pop("push_to_hub", False)
        result = super().save_pretrained(save_directory, *args, **kwargs)
        write_checksums(save_directory)
        if push_to_hub:  # save again with the upload: the folder (checksums.json included) is what gets pushed
            result = super().save_pretrained(save_directory, *args, push_to_hub=True, **kwargs)
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs):
        if kwargs.pop("verify_checksums", True) and os.path.isdir(pretrained_model_name_or_path):
            verify_checksums(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
