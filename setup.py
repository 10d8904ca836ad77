"""upmp: Universal Pooling of Multi-layer features for speaker verification.

Python dependencies and their pins live in tools/requirements.txt (one place);
tools/install.sh installs them. install_requires lists names only, so pip
never swaps the pinned torch/torchaudio pair for another build.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(r'__version__ = "([^"]+)"', Path("upmp/__init__.py").read_text()).group(1)

# every upmp.bin entry point, as upmp-<name> (test/faults/test_entry_points.py checks none is missing);
# upmp.bin.console runs each one's main through run_main (one-line errors)
ENTRY_MODULES = [
    "make_mini_corpus", "prepare_voxceleb1", "prepare_vctk", "prepare_librispeech", "prepare_voxceleb2", "convert_audio",
    "perturb_speed", "build_tiny_upstream", "data_dir", "import_data_dir", "check_upstream", "reuse_layers",
    "extract_layers", "join_layers", "train", "extract_embeddings", "score", "score_sets", "calibrate", "map_score_ids",
    "compute_metrics", "model_info", "convert_trials", "write_results", "compare_results", "jobs", "import_checkpoint",
    "package_model", "embed", "verify", "results", "export_onnx", "layer_probe", "fuse", "enroll", "identify",
    "average_checkpoints",
]
ENTRY_POINTS = {f"upmp-{m.replace('_', '-')}": f"upmp.bin.console:{m}" for m in ENTRY_MODULES}

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
