"""upmp: Universal Pooling of Multi-layer features for speaker verification.

`upmp.load_model(path, device)` (upmp.inference) is imported on first use, so `import upmp`
stays light (no torch).
"""
__version__ = "0.1.0"


def __getattr__(name):
    if name == "load_model":
        from upmp.inference import load_model
        return load_model
    raise AttributeError(f"module 'upmp' has no attribute {name!r}")
