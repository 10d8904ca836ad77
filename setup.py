"""upmp: Universal Pooling of Multi-layer features for speaker verification.

Python dependencies and their pins live in tools/requirements.txt (one place);
tools/install.sh installs them. install_requires lists names only, so pip
never swaps the pinned torch/torchaudio pair for another build.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(r'__version__ = "([^"]+)"', Path("upmp/__init__.py").read_text()).group(1)

ENTRY_POINTS = {
    "upmp-make-mini-corpus": "upmp.bin.make_mini_corpus:main",
    "upmp-prepare-voxceleb1": "upmp.bin.prepare_voxceleb1:main",
    "upmp-prepare-vctk": "upmp.bin.prepare_vctk:main",
    "upmp-prepare-librispeech": "upmp.bin.prepare_librispeech:main",
    "upmp-prepare-voxceleb2": "upmp.bin.prepare_voxceleb2:main",
    "upmp-perturb-speed": "upmp.bin.perturb_speed:main",
    "upmp-build-tiny-upstream": "upmp.bin.build_tiny_upstream:main",
    "upmp-data-dir": "upmp.bin.data_dir:main",
    "upmp-import-data-dir": "upmp.bin.import_data_dir:main",
    "upmp-extract-layers": "upmp.bin.extract_layers:main",
    "upmp-train": "upmp.bin.train:main",
    "upmp-extract-embeddings": "upmp.bin.extract_embeddings:main",
    "upmp-score": "upmp.bin.score:main",
    "upmp-compute-metrics": "upmp.bin.compute_metrics:main",
    "upmp-model-info": "upmp.bin.model_info:main",
    "upmp-convert-trials": "upmp.bin.convert_trials:main",
    "upmp-write-results": "upmp.bin.write_results:main",
    "upmp-jobs": "upmp.bin.jobs:main",
    "upmp-package-model": "upmp.bin.package_model:cli",
    "upmp-embed": "upmp.bin.embed:cli",
    "upmp-verify": "upmp.bin.verify:cli",
    "upmp-results": "upmp.bin.results:cli",
    "upmp-export-onnx": "upmp.bin.export_onnx:cli",
}

setup(
    name="upmp",
    version=version,
    description="Universal pooling of multi-layer SSL features for speaker verification "
                "(Kaldi/ESPnet-compatible recipes)",
    long_description=Path("README.md").read_text() if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["upmp", "upmp.*"]),
    python_requires=">=3.10",
    install_requires=["torch", "torchaudio", "espnet-s3prl", "espnet", "kaldiio", "numpy",
                      "scipy", "scikit-learn", "soundfile", "pyyaml", "tqdm", "matplotlib"],
    entry_points={"console_scripts": [f"{k}={v}" for k, v in ENTRY_POINTS.items()]},
)
