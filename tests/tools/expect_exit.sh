#!/bin/sh
# expect_exit.sh CODE REGEX COMMAND [ARGS...]
# Runs COMMAND; passes only when it exits with CODE and its stderr+stdout matches REGEX.
want=$1; pattern=$2; shift 2
out=$("$@" 2>&1)
got=$?
printf '%s\n' "$out"
if [ "$got" -ne "$want" ]; then
  echo "expect_exit: exit status $got, expected $want" >&2
  exit 1
fi
if ! printf '%s\n' "$out" | grep -Eq -- "$pattern"; then
  echo "expect_exit: output does not match /$pattern/" >&2
  exit 1
fi
