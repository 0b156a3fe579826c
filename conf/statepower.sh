#!/bin/sh
# Power "switch" for the example lab: keeps each board's state in a file,
# state/power/BOARD beside this script (where fakeboard.py looks for it).
# Usage: statepower.sh on|off|status BOARD
set -eu
dir=${BITELAB_STATEPOWER_DIR:-$(dirname "$0")/state/power}
mkdir -p "$dir"
case "$1" in
on | off) echo "$1" >"$dir/$2" ;;
status) cat "$dir/$2" 2>/dev/null || echo off ;;
*)
    echo "usage: $0 on|off|status BOARD" >&2
    exit 2
    ;;
esac
