"""Entry point behind utils/run.pl, utils/queue.pl and utils/slurm.pl (Kaldi's calling form after `--`).

    python -m upmp.bin.jobs --backend local|sge|slurm -- [--mem 4G] [--gpu N] [--num-threads K] \
        [--max-jobs-run M] JOB=1:N log/name.JOB.log command ...

Exit status 1 when any job failed; the console then names the logs and each failed job's
last error line. See upmp.jobs.
"""
from __future__ import annotations

import argparse

from upmp.bin.common import make_parser, run_main, setup_logging
from upmp.jobs import PROGRAMS, run_jobs


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--backend", required=True, choices=sorted(PROGRAMS))
    p.add_argument("job_args", nargs=argparse.REMAINDER,
                   help="after --: the run.pl / queue.pl / slurm.pl arguments, passed as they are")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.verbose)
    job_args = args.job_args[1:] if args.job_args[:1] == ["--"] else args.job_args
    return run_jobs(args.backend, job_args)


if __name__ == "__main__":
    run_main(main)
