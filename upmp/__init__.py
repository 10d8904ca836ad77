"""upmp: Universal Pooling of Multi-layer features for speaker verification."""
__version__ = "0.1.0"
