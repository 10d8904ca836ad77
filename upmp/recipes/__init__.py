"""Corpus preparation behind the egs/<corpus>/sv1 recipes (stage 0): each module turns one
corpus' official tree into Kaldi data dirs and trial lists, following the paper's protocol.

    upmp.recipes.vctk          VCTK 0.92 / 0.80 trees -> data/{vctk_train,vctk_valid,vctk_test}
    upmp.recipes.librispeech   LibriSpeech subsets -> data/librispeech_*
    upmp.recipes.voxceleb      VoxCeleb1 (merged or split archives) and VoxCeleb2 (m4a, or converted)
    upmp.recipes.protocols     the paper's speaker splits and trial lists: local dir, download, regeneration
    upmp.recipes.mini_corpus   the synthetic multi-speaker corpus of egs/mini (VoxCeleb1 layout, offline)

They build on upmp.data (Kaldi dirs, audio, trials); nothing in the library imports them.
"""
