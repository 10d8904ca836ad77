"""VoxCeleb fakes for the authors' evaluation protocol: a Vox2 test tree made of the small_vox2
fixture's audio, and an independent check of the authors' balanced-trial rules."""
import shutil
from math import ceil

from helpers import dev_speakers


def vox2_test_tree(small_vox2, root, n=3):
    """A Vox2 root holding only the test part: n speakers of the fixture's dev/wav as test/wav/<id>
    (2 videos x 2 utterances each), listed as `test` in vox2_meta.csv."""
    src, _ = small_vox2
    for spk in dev_speakers(n):
        shutil.copytree(src / "dev" / "wav" / spk, root / "test" / "wav" / spk)
    (root / "vox2_meta.csv").write_text("VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set \n"
                                        + "".join(f"{s} ,n{s[2:]}0 ,m ,test \n" for s in dev_speakers(n)))
    return root


def check_authors_trials(trials, utts, total):
    """The rules of the authors' trials-vox2.csv script, counted from the list itself: ceil((total // 2) / S)
    targets per speaker, ceil((total // 2) / C(S, 2)) nontargets per speaker pair, no pair twice."""
    spk = {u: u.split("-")[0] for u in utts}
    speakers = sorted(set(spk.values()))
    pairs = [(a, b) for i, a in enumerate(speakers) for b in speakers[i + 1:]]
    per_spk = {s: 0 for s in speakers}
    per_pair = {p: 0 for p in pairs}
    for a, b, t in trials:
        assert a != b and (spk[a] == spk[b]) == t
        if t:
            per_spk[spk[a]] += 1
        else:
            per_pair[tuple(sorted((spk[a], spk[b])))] += 1
    assert set(per_spk.values()) == {ceil((total // 2) / len(speakers))}
    assert set(per_pair.values()) == {ceil((total // 2) / len(pairs))}
    assert len({frozenset((a, b)) for a, b, _ in trials}) == len(trials)

