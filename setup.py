from setuptools import find_packages, setup

setup(
    name="diffusers_hpdm",
    version="0.1.0",
    description="Hierarchical Patch Diffusion Models (HPDM, CVPR 2024) for Hugging Face Diffusers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    python_requires=">=3.10",
    # Lower bounds: what the code needs. Upper bounds only where it reaches into a library's private internals.
    # The exact versions CI and `make install` use are in requirements.lock (`make lock` refreshes it).
    install_requires=[
        "torch>=2.6",  # FSDP2 `fully_shard` as a public API
        "diffusers>=0.35",  # ModelMixin.compile_repeated_blocks
        "transformers>=5",  # the bundled tokenizer is saved as transformers 5's TokenizersBackend
        "tokenizers>=0.21",  # text.py builds the demo tokenizer with it directly
        # training/fsdp_cpu.py patches AcceleratorState.__init__ as read in 1.15; 1.6 added FSDP2 (`fsdp_version: 2`)
        "accelerate>=1.6,<1.16",
        "safetensors>=0.4",
        "huggingface-hub>=0.34",
        "datasets>=3",
        "imageio>=2.31",  # imageio.v3 with the FFMPEG plugin: writes mp4 here and in diffusers' export_to_video
        "imageio-ffmpeg>=0.5",  # the ffmpeg binary export_to_video and our mp4 writer use
        "av>=12",  # reads videos in-process (seekable); the FFMPEG route spawns a process per file
        "pytorch_optimizer>=4.1,<4.2",  # training/lamb.py subclasses Lamb's internals (state layout, clamp) of 4.1
        "einops>=0.7",
        "numpy>=1.26",
        "pillow>=10",
        "tqdm>=4.66",
        "peft>=0.17",  # LoRA: diffusers' PeftAdapterMixin on the transformer, `--rank` in examples/train_t2v.py
    ],
    extras_require={"dev": ["pytest>=8", "ruff>=0.6", "hypothesis>=6.100", "pyyaml>=6", "tensorboard>=2.16"]},
    entry_points={"console_scripts": ["hpdm=diffusers_hpdm.cli:main"]},
)
