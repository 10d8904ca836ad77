#!/usr/bin/env bash
# Kaldi-style option parsing, sourced by scripts after they declare their variables:
#   . utils/parse_options.sh
# --foo-bar V, --foo_bar V and --foo-bar=V set the already-declared variable foo_bar;
# an undeclared option is an error ("invalid option"); a variable whose default is
# true/false accepts only true/false; every "--config file" is sourced first, so
# later flags override it; --help/-h prints $help_message and exits 0.

for ((_argpos = 1; _argpos < $#; _argpos++)); do
  if [ "${!_argpos}" == "--config" ]; then
    _next=$((_argpos + 1))
    config=${!_next}
    if [ ! -r "${config}" ]; then echo "$0: missing config '${config}'" 1>&2; exit 1; fi
    # shellcheck disable=SC1090
    . "${config}"
  fi
done

while true; do
  [ $# -eq 0 ] && break
  case "$1" in
    --help|-h)
      if [ -z "${help_message:-}" ]; then echo "No help found." 1>&2; else printf "%s\n" "${help_message}" 1>&2; fi
      exit 0 ;;
    --*)
      _opt=${1#--}
      if [[ "${_opt}" == *=* ]]; then
        _value=${_opt#*=}; _opt=${_opt%%=*}; _nshift=1
      else
        if [ $# -lt 2 ]; then echo "$0: no argument provided for option $1" 1>&2; exit 1; fi
        _value=$2; _nshift=2
      fi
      _name=${_opt//-/_}
      if ! [[ "${_name}" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || eval '[ -z "${'"${_name}"'+set}" ]'; then
        echo "$0: invalid option $1" 1>&2; exit 1
      fi
      _old=${!_name}
      if [ "${_old}" == "true" ] || [ "${_old}" == "false" ]; then
        if [ "${_value}" != "true" ] && [ "${_value}" != "false" ]; then
          echo "$0: expected \"true\" or \"false\" for option $1, got \"${_value}\"" 1>&2; exit 1
        fi
      fi
      printf -v "${_name}" '%s' "${_value}"
      shift "${_nshift}" ;;
    *) break ;;
  esac
done
unset _argpos _next _opt _value _nshift _name _old
true # so that "set -e" callers do not stop on the last test
