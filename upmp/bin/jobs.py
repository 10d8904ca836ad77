"""Entry point behind utils/run.pl, utils/queue.pl and utils/slurm.pl.

    python -m upmp.bin.jobs local|sge|slurm [options] JOB=1:N log.JOB.log command ...
"""
import sys

from upmp.jobs import main as run_jobs


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("local", "sge", "slurm"):
        print("usage: python -m upmp.bin.jobs local|sge|slurm [options] JOB=1:N <log> <command...>",
              file=sys.stderr)
        sys.exit(1)
    sys.exit(run_jobs(argv[0], argv[1:]))


if __name__ == "__main__":
    main()
