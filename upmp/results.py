"""Metrics of score files and the reports made of them: RESULTS.md, results.json, DET plots, the
comparison table over experiments.

    m = metrics_of_files("data/test/trials", "exp/x/scores/test.cosine")   # {"eer": %, "mindcf_0.01": ...}
    write_experiment_results(exp, systems, test_sets, upstream, data_root)  # RESULTS.md, results.json, det_*.png
    write_comparison(out, exp_dirs)                                         # one table over exp/*/results.json
    seed_groups(result_rows(exp_dirs))  # <name>_seed<N> experiments: mean, range and rows per seed

EER convention and minDCF normalisation: upmp.metrics.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
import yaml

from upmp.scoring.io import align_scores
from upmp.errors import ScoringError
from upmp.fileio import atomic_write_text
from upmp.metrics import AUTHORS_CONVENTIONS, EER_CONVENTION, compute_eer, compute_min_dcf, operating_points
from upmp.scoring.calibration import actual_dcf, cllr


def metrics_of(scores: np.ndarray, labels: np.ndarray, llr: bool = False, source: str = "the trials") -> dict:
    """EER (%), minDCF at 0.01 / 0.05, counts; with llr=True (calibrated scores) also
    Cllr and actual DCF at 0.01 / 0.05."""
    n_tar, n_non = int(labels.sum()), int((~labels).sum())
    if n_tar == 0 or n_non == 0:
        raise ScoringError(f"{source}: metrics need target and nontarget trials, got {n_tar} target and "
                           f"{n_non} nontarget")
    out = {"eer": 100 * compute_eer(scores, labels),
           "mindcf_0.01": compute_min_dcf(scores, labels, 0.01),
           "mindcf_0.05": compute_min_dcf(scores, labels, 0.05),
           "n_target": n_tar, "n_nontarget": n_non}
    if llr:
        out.update({"cllr": cllr(scores, labels), "actdcf_0.01": actual_dcf(scores, labels, 0.01),
                    "actdcf_0.05": actual_dcf(scores, labels, 0.05)})
    return out


def metrics_of_files(trials: str, scores: str, llr: bool = False) -> dict:
    """metrics_of a score file aligned to Kaldi trials."""
    return metrics_of(*align_scores(trials, scores), llr=llr, source=trials)


def plot_det(curves: Dict[str, Tuple[np.ndarray, np.ndarray]], png: Path) -> None:
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


def write_experiment_results(exp: Path, systems: Sequence[str], test_sets: Sequence[str], upstream: str = "",
                             data_root: str = "data") -> dict:
    """Stage 5: <exp>/RESULTS.md, results.json and det_<set>.png from data_root/<set>/trials and
    <exp>/scores/<set>.<system> (+ .llr when calibrated; a <system>.qmf holds QMF-calibrated LLRs, the
    system `fusion` fused LLRs). Every metric is computed before anything is written, so a bad score
    file leaves the previous reports as they were."""
    exp = Path(exp)
    rows, results, curves_of = [], {}, {}
    for name in test_sets:
        curves = curves_of[name] = {}
        trials = f"{data_root}/{name}/trials"
        for system in systems:
            scores = exp / "scores" / f"{name}.{system}"
            if not scores.is_file():
                raise ScoringError(f"{scores}: no such score file (system {system!r} of test set {name!r}); run "
                                   f"stage 4 with the same --scoring / --score_norm / --calibration / --fusion "
                                   f"as this stage 5, or give stage 5 the systems stage 4 scored")
            aligned = align_scores(trials, str(scores))
            m = metrics_of(*aligned, source=trials)
            # a .qmf system's and the fusion's scores are LLRs already; others have a linear .llr
            llr = scores if system.endswith(".qmf") or system == "fusion" else scores.with_name(scores.name + ".llr")
            if llr.is_file():
                c = metrics_of_files(trials, str(llr), llr=True)
                m.update({k: c[k] for k in ("cllr", "actdcf_0.01", "actdcf_0.05")})
            results[f"{name}/{system}"] = m
            curves[system] = aligned
            calib = (f"{m['cllr']:.3f} | {m['actdcf_0.01']:.4f}" if "cllr" in m else "- | -")
            rows.append(f"| {name} | {system} | {m['eer']:.2f} | {m['mindcf_0.01']:.4f} | "
                        f"{m['mindcf_0.05']:.4f} | {calib} | {m['n_target']} / {m['n_nontarget']} |")
    for name, curves in curves_of.items():
        plot_det(curves, exp / f"det_{name}.png")
    cfg = yaml.safe_load((exp / "config.yaml").read_text()) if (exp / "config.yaml").is_file() else {}
    summary_path = exp / "train_summary.json"  # written by the trainer beside model.pt
    model = read_json(summary_path, "rerun training (stage 2) or delete it") if summary_path.is_file() else {}
    lines = [
        f"# Results: {exp.name}",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"- upstream: {upstream}",
        f"- backend: {cfg.get('backend', '?')} ({model.get('num_params', '?')} trainable parameters, "
        f"loss head excluded; trained in {model.get('train_seconds', 0):.0f} s); config: {exp / 'config.yaml'}",
        f"- EER: {EER_CONVENTION}; minDCF normalised, C_miss = C_fa = 1 ({AUTHORS_CONVENTIONS})",
        "- systems: <scoring>[.<score norm>]; Cllr (bits) and actDCF after logistic calibration on the "
        "validation trials, where a validation set is given; <system>.qmf: quality-aware calibration (score, "
        "log durations and embedding norms of both sides) on the validation trials, whose LLRs also give its "
        "EER and minDCF; fusion: linear logistic-regression fusion of the systems (sv.sh --fusion) on the "
        "validation trials, LLRs (weights in scores/<set>.fusion.json)",
        "",
        "| test set | system | EER (%) | minDCF (0.01) | minDCF (0.05) | Cllr | actDCF (0.01) | target / nontarget |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "DET curves: " + ", ".join(f"det_{n}.png" for n in test_sets) + "; training curve: train_curve.png",
        "",
    ]
    atomic_write_text(exp / "RESULTS.md", "\n".join(lines))
    summary = {"experiment": exp.name, "backend": cfg.get("backend"), "upstream": upstream,
               "num_params": model.get("num_params"), "train_seconds": model.get("train_seconds"),
               "results": results}
    atomic_write_text(exp / "results.json", json.dumps(summary, indent=2) + "\n")
    return summary


def read_json(path: Path, what_to_do: str) -> dict:
    """A JSON object we wrote earlier; a truncated or overwritten file is one error naming it."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScoringError(f"{path}: not complete JSON ({e}); {what_to_do}") from None
    if not isinstance(value, dict):
        raise ScoringError(f"{path}: expected a JSON object, got {type(value).__name__}; {what_to_do}")
    return value


def _results_problem(r: dict) -> str:
    """What is wrong with a results.json's content (stage 5's form), or ''."""
    if not isinstance(r.get("results"), dict) or not isinstance(r.get("experiment"), str):
        return "no 'experiment' name and 'results' object"
    for key, m in r["results"].items():
        if "/" not in key:
            return f"result key {key!r} is not '<test set>/<system>'"
        m = m if isinstance(m, dict) else {}
        missing = [k for k in ("eer", "mindcf_0.01", "mindcf_0.05") if not isinstance(m.get(k), (int, float))]
        if missing:
            return f"result {key!r} has no number for {', '.join(missing)}"
    return ""


def result_rows(exp_dirs: Iterable[str]) -> List[dict]:
    """One dict per (experiment, test set, system) from each <exp_dir>/results.json (dirs without one
    are skipped): exp_dir, experiment, backend, upstream, num_params, train_seconds, test_set, system
    and the metrics."""
    rows = []
    for d in sorted({Path(x) for x in exp_dirs}):
        f = d / "results.json"
        if not f.is_file():
            continue
        r = read_json(f, "rerun stage 5 (write_results) for this experiment")
        bad = _results_problem(r)
        if bad:
            raise ScoringError(f"{f}: {bad}; rerun stage 5 (write_results) for this experiment")
        for key, m in r["results"].items():
            test_set, system = key.split("/", 1)
            rows.append(dict(exp_dir=str(d), experiment=r["experiment"], backend=r.get("backend"),
                             upstream=r.get("upstream"), num_params=r.get("num_params"),
                             train_seconds=r.get("train_seconds"), test_set=test_set, system=system, **m))
    return rows


SEED_METRICS = ("eer", "mindcf_0.01", "mindcf_0.05", "cllr", "actdcf_0.01", "actdcf_0.05")
_SEED = re.compile(r"_seed(\d+)(?=_|$)")


def seed_of(experiment: str) -> Tuple[str, object]:
    """(base name, seed) of an experiment name: "upmp_ge2e_seed2_lmft" -> ("upmp_ge2e_lmft", 2);
    a name without _seed<N> is its own base (seed None)."""
    m = _SEED.search(experiment)
    return (experiment, None) if m is None else (experiment[:m.start()] + experiment[m.end():], int(m.group(1)))


def seed_groups(rows: Sequence[dict]) -> List[dict]:
    """Rows of result_rows grouped over training seeds: experiments named <base>_seed<N> (sv.sh
    --seeds) with the same test set and system form one group. Each group: experiment (the base
    name), backend, upstream, num_params, test_set, system, seeds (sorted), n, train_seconds (mean),
    for every metric the rows have: <metric> (mean), <metric>_min, <metric>_max, and rows (the
    per-seed rows, by seed). An experiment without a seed is a group of one, apart from any
    <name>_seed<N> of the same name."""
    groups: Dict[Tuple[str, bool, str, str], List[dict]] = {}
    for r in rows:
        base, seed = seed_of(r["experiment"])
        # the seeds of one base name in one exp dir are a group; a run without a seed is its own
        where = r["exp_dir"] if seed is None else str(Path(r["exp_dir"]).parent / base)
        groups.setdefault((where, seed is None, r["test_set"], r["system"]), []).append(dict(r, seed=seed, base=base))
    out = []
    for (_, _, test_set, system), members in groups.items():
        base = members[0]["base"]
        members.sort(key=lambda m: -1 if m["seed"] is None else m["seed"])
        g = dict(experiment=base, backend=members[0]["backend"], upstream=members[0]["upstream"],
                 num_params=members[0]["num_params"], test_set=test_set, system=system,
                 seeds=[m["seed"] for m in members], n=len(members), rows=members)
        secs = [m["train_seconds"] for m in members if isinstance(m.get("train_seconds"), (int, float))]
        g["train_seconds"] = float(np.mean(secs)) if secs else None
        for k in SEED_METRICS:
            vals = [m[k] for m in members if isinstance(m.get(k), (int, float))]
            if len(vals) == len(members):  # a metric only some seeds have (calibration) is left out
                g.update({k: float(np.mean(vals)), f"{k}_min": float(min(vals)), f"{k}_max": float(max(vals))})
        out.append(g)
    return out


def mean_and_range(g: dict, key: str, fmt: str) -> str:
    """"9.61 (7.99 - 11.28)" for a group of seeds, "7.99" for one run, "-" when the metric is absent."""
    if g.get(key) is None:
        return "-"
    if g["n"] == 1:
        return format(g[key], fmt)
    return f"{g[key]:{fmt}} ({g[key + '_min']:{fmt}} - {g[key + '_max']:{fmt}})"


def write_comparison(out: str, exp_dirs: Iterable[str]) -> List[dict]:
    """One Markdown table over the experiments' results.json (those without are skipped):
    experiment, backend, trainable parameters, training time, test set, system, EER, minDCF. The
    seeds of one experiment (<name>_seed<N>) are one row: the mean and (range) over the seeds."""
    groups = seed_groups(result_rows(exp_dirs))
    rows = []
    for g in groups:
        params = f"{g['num_params']:,}" if g.get("num_params") else "?"
        seconds = f"{g['train_seconds']:.0f}" if g.get("train_seconds") else "?"
        seeds = ", ".join(str(s) for s in g["seeds"]) if g["seeds"] != [None] else "-"
        rows.append(f"| {g['experiment']} | {g['backend']} | {params} | {seconds} | {seeds} | {g['test_set']} | "
                    f"{g['system']} | {mean_and_range(g, 'eer', '.2f')} | {mean_and_range(g, 'mindcf_0.01', '.4f')} | "
                    f"{mean_and_range(g, 'mindcf_0.05', '.4f')} |")
    lines = [f"# Backend comparison ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"EER: {EER_CONVENTION}; minDCF normalised ({AUTHORS_CONVENTIONS}). Parameters: trainable, loss head excluded. "
             "Several training seeds (<name>_seed<N>): the mean and (the range) over them.", "",
             "| experiment | backend | parameters | training (s) | seeds | test set | system | EER (%) | "
             "minDCF (0.01) | minDCF (0.05) |",
             "|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    atomic_write_text(out, "\n".join(lines))
    return groups
