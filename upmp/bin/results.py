"""Collect the results of several experiments into one table and one DET plot.

    upmp-results egs/mini/sv1/exp/*/ [--out cmp/results] [--test_set voxceleb1_test]

Reads <exp_dir>/results.json (stage 5) of every experiment given (dirs without one are
skipped with a warning; a path that is not a directory is an error) and writes <out>.md (Markdown
tables, also printed), <out>.csv (a row per experiment, test set and system), <out>.json and <out>_det.png.
Experiments named <name>_seed<N> (the recipes' --seeds) are grouped: the first table gives each
group's mean and (range) over its seeds, the second every run; <out>.json holds both.
The DET plot has one DET curve per experiment and system on one test set (the first one found unless
--test_set), from <exp_dir>/scores/<set>.<system> and the trials <data_root>/<set>/trials
(default: the recipe's data/, i.e. <exp_dir>/../../data). For comparing backends or upstreams.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from pathlib import Path

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.errors import DataDirError

logger = logging.getLogger("results")

COLUMNS = ["experiment", "backend", "upstream", "num_params", "train_seconds", "test_set", "system",
           "eer", "mindcf_0.01", "mindcf_0.05", "cllr", "n_target", "n_nontarget"]


def get_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("exp_dirs", nargs="+", help="experiment dirs (exp/<name>)")
    p.add_argument("--out", default="results", help="output prefix: <out>.md, <out>.csv, <out>_det.png")
    p.add_argument("--test_set", default=None, help="test set of the DET plot [the first one]")
    p.add_argument("--data_root", default=None, help="dir holding <set>/trials [<exp_dir>/../../data]")
    return p


def _cell(v, fmt=""):
    return "-" if v is None else format(v, fmt)


def check_exp_dirs(exp_dirs) -> None:
    """A path that is not a directory (a typo) is an error naming it; a directory without
    results.json (an experiment before stage 5, or another dir a glob like exp/*/ matched) is
    skipped with a warning naming it."""
    for d in exp_dirs:
        p = Path(d)
        if not p.is_dir():
            raise DataDirError(f"{d}: {'not a directory' if p.exists() else 'no such directory'}; "
                               "give experiment dirs (exp/<name>, with results.json from stage 5)")
        if not (p / "results.json").is_file():
            what = "an experiment before stage 5" if (p / "config.yaml").is_file() else "not an experiment dir"
            logger.warning("%s: no results.json (%s), skipped", d, what)


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    from upmp.results import mean_and_range, result_rows, seed_groups
    from upmp.fileio import atomic_write_text
    from upmp.metrics import EER_CONVENTION
    check_exp_dirs(args.exp_dirs)
    rows = result_rows(args.exp_dirs)
    if not rows:
        raise DataDirError(f"no results.json in {' '.join(args.exp_dirs)}; run stage 5 (write_results) first")
    groups = seed_groups(rows)
    out = Path(args.out)
    md = []
    if any(g["n"] > 1 for g in groups):
        md += [f"Mean and (range) over training seeds ({len(groups)} systems)", "",
               "| experiment | backend | upstream | parameters | seeds | test set | system | EER (%) | "
               "minDCF (0.01) | minDCF (0.05) | Cllr |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        md += [f"| {g['experiment']} | {g['backend']} | {g['upstream'] or '-'} | {_cell(g['num_params'], ',')} | "
               f"{', '.join('-' if s is None else str(s) for s in g['seeds'])} | {g['test_set']} | {g['system']} | "
               f"{mean_and_range(g, 'eer', '.2f')} | {mean_and_range(g, 'mindcf_0.01', '.4f')} | "
               f"{mean_and_range(g, 'mindcf_0.05', '.4f')} | {mean_and_range(g, 'cllr', '.3f')} |" for g in groups]
        md += ["", "Every run", ""]
    md += ["| experiment | backend | upstream | parameters | test set | system | EER (%) | minDCF (0.01) | "
          "minDCF (0.05) | Cllr |", "|---|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['experiment']} | {r['backend']} | {r['upstream'] or '-'} | {_cell(r['num_params'], ',')} | "
           f"{r['test_set']} | {r['system']} | {r['eer']:.2f} | {r['mindcf_0.01']:.4f} | {r['mindcf_0.05']:.4f} | "
           f"{_cell(r.get('cllr'), '.3f')} |" for r in rows]
    text = "\n".join(md + ["", f"EER: {EER_CONVENTION}; minDCF normalised. DET curves: {out.name}_det.png", ""])
    atomic_write_text(Path(f"{out}.md"), text)
    summary = [{k: v for k, v in g.items() if k != "rows"} | {"runs": [r["exp_dir"] for r in g["rows"]]}
               for g in groups]
    atomic_write_text(Path(f"{out}.json"), json.dumps({"groups": summary, "rows": rows}, indent=2) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(Path(f"{out}.csv"), buf.getvalue())

    from upmp.results import plot_det
    from upmp.scoring.io import align_scores
    test_set = args.test_set or rows[0]["test_set"]
    curves = {}
    for r in rows:
        if r["test_set"] != test_set:
            continue
        exp = Path(r["exp_dir"])
        data_root = Path(args.data_root) if args.data_root else exp.parent.parent / "data"
        trials = data_root / test_set / "trials"
        scores = exp / "scores" / f"{test_set}.{r['system']}"
        if not (trials.is_file() and scores.is_file()):
            logger.warning("no DET curve for %s %s: %s or %s missing", r["experiment"], r["system"], scores, trials)
            continue
        curves[f"{r['experiment']} {r['system']}"] = align_scores(str(trials), str(scores))
    if curves:
        plot_det(curves, Path(f"{out}_det.png"))
    print(text, end="")
    logger.info("wrote %s, %s, %s%s", Path(f"{out}.md"), Path(f"{out}.csv"), Path(f"{out}.json"),
                f", {out}_det.png ({len(curves)} curves on {test_set})" if curves else "")



if __name__ == "__main__":
    run_main(main)
