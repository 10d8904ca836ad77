"""`s3prl.hub` without importing every upstream S3PRL knows.

S3PRL's hub module star-imports the `hubconf.py` of all its ~36 upstreams, so building any one
upstream (s3prl.nn.S3PRLUpstream looks names up in `s3prl.hub`) first imports ESPnet's HuBERT task,
g2p_en, inflect and nltk (which tries to download data): about 7 s of a 10 s extraction job, paid
by every stage-1 job, every online training and every check, and a network attempt on machines
that have none. `install()` puts a stand-in `s3prl.hub` into sys.modules that reads hub.py's
import lines and each hubconf's top-level definitions (text only, ~20 ms) and imports just the
hubconf that defines the name asked for: the same function objects, the same star-import
precedence (the last import that defines a name wins).

Anything this does not recognise falls back to S3PRL's own module: a hub.py with other
statements than imports and `options()` is left alone (install() returns False), and a name no
hubconf defines at top level (one a hubconf itself imports) imports the real hub on first use,
with NLTK's downloader set aside meanwhile: g2p_en (imported by one hubconf, used by none of the
speech upstreams) asks NLTK for two data packages at import, which on a network that drops packets
waits 120 s per read and up to hours per package; it gets "not downloaded" at once instead.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import logging
import sys
import types
from pathlib import Path
from typing import Dict, List, Optional

HUB = "s3prl.hub"
logger = logging.getLogger(__name__)


@contextlib.contextmanager
def no_nltk_downloads():
    """nltk.download answers False (not downloaded) without a network attempt, then is restored."""
    try:
        import nltk
    except ImportError:
        yield
        return
    download = nltk.download

    def refused(info_or_id=None, *args, **kwargs):
        logger.info("not downloading NLTK data %r while importing S3PRL's hub (no S3PRL upstream uses it)",
                    info_or_id)
        return False
    nltk.download = refused
    try:
        yield
    finally:
        nltk.download = download


def _top_level_names(path: Path) -> List[str]:
    """Public functions and classes a module file defines at top level (parsed, not imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")]


def hub_index(package_dir: Path) -> Optional[Dict[str, str]]:
    """{entry name: module that defines it} as s3prl/hub.py's imports resolve them, or None when
    hub.py is not the plain list of imports this understands."""
    hub_py = package_dir / "hub.py"
    index: Dict[str, str] = {}
    for node in ast.parse(hub_py.read_text(encoding="utf-8"), filename=str(hub_py)).body:
        if isinstance(node, ast.FunctionDef) and node.name == "options":
            continue
        if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                and node.module.startswith("s3prl.")):
            return None
        path = package_dir.joinpath(*node.module.split(".")[1:]).with_suffix(".py")
        if not path.is_file():
            return None
        if [a.name for a in node.names] == ["*"]:
            for name in _top_level_names(path):
                index[name] = node.module  # later star imports override earlier ones, as in Python
        else:
            for alias in node.names:
                index[alias.asname or alias.name] = node.module
    return index


class LazyHub(types.ModuleType):
    """Stands for s3prl.hub: attributes resolve to the defining hubconf's objects on first use."""

    def __init__(self, index: Dict[str, str], origin: str):
        super().__init__(HUB, "s3prl.hub, resolved lazily by upmp.upstream.s3prl_hub")
        self.__file__ = origin
        self._index = index
        self._real: Optional[types.ModuleType] = None

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        module = self._index.get(name)
        if module is None:
            return getattr(self._real_hub(), name)
        value = getattr(importlib.import_module(module), name)
        setattr(self, name, value)
        return value

    def options(self, only_registered_ckpt: bool = False) -> List[str]:
        """Entry names as s3prl.hub.options() lists them (from the index: nothing is imported)."""
        suffixes = ("_local", "_url", "_gdriveid", "_custom")
        return [n for n in self._index if n != "options" and not (only_registered_ckpt and n.endswith(suffixes))]

    def _real_hub(self) -> types.ModuleType:
        """S3PRL's own hub module (imports every upstream), which then replaces this stand-in;
        modules that bound the stand-in earlier keep reaching the real one through it."""
        if self._real is None:
            import s3prl
            del sys.modules[HUB]
            try:
                with no_nltk_downloads():
                    self._real = importlib.import_module(HUB)
            except BaseException:
                sys.modules[HUB] = self
                raise
            s3prl.hub = self._real
        return self._real


def install() -> bool:
    """Put the lazy s3prl.hub in place (once, before s3prl.nn is imported); False when S3PRL's
    hub is already imported or not the layout this reads (then nothing changes)."""
    if HUB in sys.modules:
        return isinstance(sys.modules[HUB], LazyHub)
    import s3prl
    package_dir = Path(s3prl.__file__).parent
    index = hub_index(package_dir)
    if index is None:
        return False
    hub = LazyHub(index, str(package_dir / "hub.py"))
    sys.modules[HUB] = hub
    s3prl.hub = hub
    return True
