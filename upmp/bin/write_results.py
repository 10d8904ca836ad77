"""Stage 5: metrics of every test set's scores -> <exp_dir>/RESULTS.md and det.png.

    python -m upmp.bin.write_results --exp_dir exp/upmp_x --scoring cosine --test_sets voxceleb1_test
Reads data/<set>/trials and <exp_dir>/scores/<set>.<system> (with <system>.llr, its linear
calibration, when present); a system named <x>.qmf holds QMF-calibrated LLRs.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from upmp.bin.common import fail
from upmp.bin.compute_metrics import compute_all, metrics_of
from upmp.data.kaldi_dir import DataDirError
from upmp.fileio import atomic_write_text
from upmp.data.trials import align_scores
from upmp.metrics import EER_CONVENTION, operating_points


def plot_det(curves: dict, png: Path) -> None:
    """DET curves (probit axes) of {label: (scores, labels)}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm
    ticks = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    for label, (scores, labels) in curves.items():
        p_miss, p_fa = operating_points(scores, labels)
        ax.plot(norm.ppf(np.clip(p_fa, 1e-4, 1 - 1e-4)), norm.ppf(np.clip(p_miss, 1e-4, 1 - 1e-4)), label=label)
    ax.set_xticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_xlim(norm.ppf(0.0005), norm.ppf(0.5))
    ax.set_ylim(norm.ppf(0.0005), norm.ppf(0.5))
    ax.plot(ax.get_xlim(), ax.get_ylim(), ":", color="gray", linewidth=0.8)
    ax.set_xlabel("false alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", required=True)
    p.add_argument("--systems", nargs="+", default=["cosine"],
                   help="score-file suffixes, e.g. cosine plda.asnorm (<exp>/scores/<set>.<system>)")
    p.add_argument("--upstream", default="")
    p.add_argument("--data_root", default="data")
    p.add_argument("--test_sets", nargs="+", required=True)
    args = p.parse_args(argv)
    exp = Path(args.exp_dir)
    rows, results = [], {}
    try:
        for name in args.test_sets:
            curves = {}
            trials = f"{args.data_root}/{name}/trials"
            for system in args.systems:
                scores = exp / "scores" / f"{name}.{system}"
                aligned = align_scores(trials, str(scores))
                m = metrics_of(*aligned)
                # a .qmf system's scores are LLRs already (quality-aware calibration); others have a linear .llr
                llr = scores if system.endswith(".qmf") else scores.with_name(scores.name + ".llr")
                if llr.is_file():
                    c = compute_all(trials, str(llr), llr=True)
                    m.update({k: c[k] for k in ("cllr", "actdcf_0.01", "actdcf_0.05")})
                results[f"{name}/{system}"] = m
                curves[system] = aligned
                calib = (f"{m['cllr']:.3f} | {m['actdcf_0.01']:.4f}" if "cllr" in m else "- | -")
                rows.append(f"| {name} | {system} | {m['eer']:.2f} | {m['mindcf_0.01']:.4f} | "
                            f"{m['mindcf_0.05']:.4f} | {calib} | {m['n_target']} / {m['n_nontarget']} |")
            plot_det(curves, exp / f"det_{name}.png")
    except (DataDirError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    cfg = yaml.safe_load((exp / "config.yaml").read_text()) if (exp / "config.yaml").is_file() else {}
    summary_path = exp / "train_summary.json"  # written by the trainer beside model.pt
    if summary_path.is_file():
        model = json.loads(summary_path.read_text())
    elif (exp / "model.pt").is_file():  # trained before train_summary.json existed
        from upmp.checkpoint import read_model
        model = read_model(exp / "model.pt")
    else:
        model = {}
    lines = [
        f"# Results: {exp.name}",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"- upstream: {args.upstream}",
        f"- backend: {cfg.get('backend', '?')} ({model.get('num_params', '?')} trainable parameters, "
        f"loss head excluded; trained in {model.get('train_seconds', 0):.0f} s); config: {exp / 'config.yaml'}",
        f"- EER: {EER_CONVENTION}; minDCF normalised, C_miss = C_fa = 1",
        "- systems: <scoring>[.<score norm>]; Cllr (bits) and actDCF after logistic calibration on the "
        "validation trials, where a validation set is given; <system>.qmf: quality-aware calibration (score, "
        "log durations and embedding norms of both sides) on the validation trials, whose LLRs also give its "
        "EER and minDCF",
        "",
        "| test set | system | EER (%) | minDCF (0.01) | minDCF (0.05) | Cllr | actDCF (0.01) | target / nontarget |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "DET curves: " + ", ".join(f"det_{n}.png" for n in args.test_sets) + "; training curve: train_curve.png",
        "",
    ]
    atomic_write_text(exp / "RESULTS.md", "\n".join(lines))
    summary = {"experiment": exp.name, "backend": cfg.get("backend"), "upstream": args.upstream,
               "num_params": model.get("num_params"), "train_seconds": model.get("train_seconds"),
               "results": results}
    atomic_write_text(exp / "results.json", json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
