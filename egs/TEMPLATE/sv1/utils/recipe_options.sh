#!/usr/bin/env bash
# Splits a recipe's own options from the stage script's. Source it from run.sh after setting
# defaults for the recipe's options and listing their names:
#     vctk_root=${VCTK}; protocol_dir=""
#     recipe_opts="vctk_root protocol_dir"
#     . utils/recipe_options.sh          # reads "$@"
#     ./sv.sh ... "${sv_args[@]}"
# Each listed option is accepted as --name value or --name=value (dashes or underscores) and sets
# the variable of that name; everything else is collected, in order, in the array sv_args for
# ./sv.sh (where later flags win and unknown ones are errors). --help prints the comment block at
# the top of run.sh, then sv.sh's help.
sv_args=()
while [ $# -gt 0 ]; do
  _name=${1%%=*}
  _name=${_name#--}
  _name=${_name//-/_}
  if [[ $1 == --* ]] && [[ " ${recipe_opts} " == *" ${_name} "* ]]; then
    if [[ $1 == *=* ]]; then
      printf -v "${_name}" '%s' "${1#*=}"; shift
    elif [ $# -ge 2 ]; then
      printf -v "${_name}" '%s' "$2"; shift 2
    else
      echo "$0: option $1 needs a value" 1>&2; exit 1
    fi
  else
    if [ "$1" == --help ] || [ "$1" == -h ]; then
      awk 'NR > 1 && !/^#/ {exit} NR > 1 {print substr($0, 3)}' "$0" 1>&2
    fi
    sv_args+=("$1"); shift
  fi
done
unset _name
