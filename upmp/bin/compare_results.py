"""One comparison table over experiments: the backends (and upstreams) side by side.

    python -m upmp.bin.compare_results --out exp/RESULTS.md --exp_dirs exp/*/

Reads each <exp_dir>/results.json (written by stage 5) and writes one Markdown
table: experiment, backend, trainable parameters, training time, test set,
system, EER, minDCF (0.01 / 0.05).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from upmp.fileio import atomic_write_text
from upmp.metrics import EER_CONVENTION


def result_rows(exp_dirs) -> list:
    """One dict per (experiment, test set, system) from each <exp_dir>/results.json (dirs without one are skipped)."""
    rows = []
    for d in sorted({Path(x) for x in exp_dirs}):
        f = d / "results.json"
        if not f.is_file():
            continue
        r = json.loads(f.read_text())
        for key, m in r["results"].items():
            test_set, system = key.split("/", 1)
            rows.append(dict(exp_dir=str(d), experiment=r["experiment"], backend=r.get("backend"),
                             upstream=r.get("upstream"), num_params=r.get("num_params"),
                             train_seconds=r.get("train_seconds"), test_set=test_set, system=system, **m))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dirs", nargs="+", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    rows = []
    for r in result_rows(args.exp_dirs):
        params = f"{r['num_params']:,}" if r.get("num_params") else "?"
        seconds = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else "?"
        rows.append(f"| {r['experiment']} | {r['backend']} | {params} | {seconds} | {r['test_set']} | {r['system']} | "
                    f"{r['eer']:.2f} | {r['mindcf_0.01']:.4f} | {r['mindcf_0.05']:.4f} |")
    lines = [f"# Backend comparison ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"EER: {EER_CONVENTION}; minDCF normalised. Parameters: trainable, loss head excluded.", "",
             "| experiment | backend | parameters | training (s) | test set | system | EER (%) | minDCF (0.01) | minDCF (0.05) |",
             "|---|---|---|---|---|---|---|---|---|", *rows, ""]
    atomic_write_text(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
