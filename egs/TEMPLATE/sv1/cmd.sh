# Job back-ends (Kaldi calling form: $cmd [--mem 4G] [--gpu N] JOB=1:N log.JOB.log command ...).
#   run.pl   : this machine (default)
#   queue.pl : Sun Grid Engine (qsub array jobs)
#   slurm.pl : Slurm (sbatch array jobs)
# Choose with UPMP_CMD_BACKEND=local|sge|slurm or edit the lines below.
case "${UPMP_CMD_BACKEND:-local}" in
  local)
    export train_cmd="run.pl"
    export cuda_cmd="run.pl"
    export decode_cmd="run.pl" ;;
  sge)
    export train_cmd="queue.pl --mem 4G"
    export cuda_cmd="queue.pl --mem 16G --gpu 1"
    export decode_cmd="queue.pl --mem 4G" ;;
  slurm)
    export train_cmd="slurm.pl --mem 4G"
    export cuda_cmd="slurm.pl --mem 16G --gpu 1"
    export decode_cmd="slurm.pl --mem 4G" ;;
  *) echo "cmd.sh: unknown UPMP_CMD_BACKEND=${UPMP_CMD_BACKEND} (local|sge|slurm)" 1>&2; return 1 ;;
esac
