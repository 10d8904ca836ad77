"""upmp.upstream.s3prl_hub: the lazy stand-in for s3prl.hub builds the same upstreams as S3PRL's
own hub module without importing the other upstreams (ESPnet's HuBERT task, g2p_en, nltk)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import bash_env
from upmp.upstream.s3prl_hub import hub_index

SCRIPT = r"""
import json, sys
import numpy as np, torch
from upmp.upstream import build_upstream
from upmp.upstream.s3prl_hub import LazyHub
torch.manual_seed(0)
wav = torch.randn(1, 8000)
def stack():
    with torch.no_grad():
        return build_upstream("wavlm_local", sys.argv[1])(wav, torch.tensor([8000]))[0].numpy()
lazy = stack()
out = {"lazy_hub": isinstance(sys.modules["s3prl.hub"], LazyHub),
       "heavy_imported": [m for m in ("g2p_en", "nltk", "espnet2.tasks.hubert") if m in sys.modules]}
import nltk
nltk.data.path[:] = [sys.argv[2]]   # an empty dir: g2p_en finds no data and asks for a download
asked = []
def record(*args, **kwargs):
    asked.append(args)
    return False
nltk.download = record
import s3prl.hub as hub
out["options"] = hub.options()
out["fallback_module"] = hub.vq_apc_url.__module__   # defined by no hubconf at top level: S3PRL's own hub
out["nltk_downloads"] = len(asked)   # reached nltk.download during the real hub's import
out["nltk_restored"] = nltk.download is record
out["real_hub_now"] = not isinstance(sys.modules["s3prl.hub"], LazyHub)
real = sys.modules["s3prl.hub"]
out["real_options"] = real.options()
out["modules"] = {n: getattr(real, n).__module__ for n in out["options"]}
out["same_stack"] = bool(np.array_equal(stack(), lazy))
print(json.dumps(out))
"""


def test_lazy_hub_builds_what_s3prl_builds_without_the_other_upstreams(tiny_wavlm, tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_wavlm), str(tmp_path)], capture_output=True,
                       text=True, env=bash_env(), timeout=300)  # ~15 s
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["lazy_hub"] and out["heavy_imported"] == []
    # every name the index lists is the object S3PRL's hub binds under it (star-import precedence
    # included: wav2vec2_local is defined by vq_wav2vec's and wav2vec2's hubconf, the later wins)
    import s3prl
    index = hub_index(Path(s3prl.__file__).parent)
    assert out["modules"] == {n: index[n] for n in out["options"]}
    assert index["wav2vec2_local"] == "s3prl.upstream.wav2vec2.hubconf"
    # the index lists every entry S3PRL lists, less names a hubconf only imports (reached by the fallback)
    missing = set(out["real_options"]) - set(out["options"])
    assert "wavlm_base_plus" in out["options"] and "vq_apc_url" in missing and len(missing) < 10
    assert out["fallback_module"] == "s3prl.upstream.apc.hubconf" and out["real_hub_now"]
    # g2p_en's import-time downloads never reach NLTK's downloader (a stalled network waited hours)
    assert out["nltk_downloads"] == 0 and out["nltk_restored"]
    assert out["same_stack"]  # the upstream built through the real hub afterwards gives the same stack


@pytest.mark.parametrize("hub_py", ["import os\nHUB = os.environ\n", "from .upstream.x.hubconf import *\n",
                                    "from s3prl.upstream.missing.hubconf import *\n"])
def test_a_hub_py_it_does_not_understand_is_left_alone(tmp_path, hub_py):
    (tmp_path / "hub.py").write_text(hub_py)
    assert hub_index(tmp_path) is None


def test_index_follows_star_import_order(tmp_path):
    for name, body in (("a", "def shared():\n    pass\ndef only_a():\n    pass\ndef _private():\n    pass\n"),
                       ("b", "import os\nclass Shared2:\n    pass\ndef shared():\n    pass\n")):
        d = tmp_path / "upstream" / name
        d.mkdir(parents=True)
        (d / "hubconf.py").write_text(body)
    (tmp_path / "hub.py").write_text("from s3prl.upstream.a.hubconf import *\nfrom s3prl.upstream.b.hubconf import *\n"
                                     "\n\ndef options():\n    return []\n")
    assert hub_index(tmp_path) == {"shared": "s3prl.upstream.b.hubconf", "only_a": "s3prl.upstream.a.hubconf",
                                   "Shared2": "s3prl.upstream.b.hubconf"}
