#!/usr/bin/env bash
# Checks scripts/ecopt-launch with plain shell ranks (no transport): the
# environment each rank gets, output prefixes, a failing rank's status and the
# stopping of the others, the job timeout, and bad arguments.
#   launcher_test.sh path/to/ecopt-launch
set -uo pipefail
launch="$1"
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
expect_status() {  # expected, actual, what
  [[ "$2" == "$1" ]] || fail "$3: status $2, expected $1"
}
expect_line() {  # text, regex, what
  grep -Eq -- "$2" <<<"$1" || fail "$3: no line matching '$2' in:"$'\n'"$1"
}

# Every rank sees its rank, the world size, rank 0's address and one job token.
out=$(bash "$launch" -n 3 --addr 127.0.0.1:7000 -- \
  bash -c 'echo "env $ECOPT_RANK $ECOPT_WORLD_SIZE $ECOPT_ADDR ${ECOPT_JOB_TOKEN:+token}"' 2>&1)
expect_status 0 $? "three succeeding ranks"
for r in 0 1 2; do
  expect_line "$out" "^\[rank $r\] env $r 3 127\.0\.0\.1:7000 token$" "environment of rank $r"
done
tokens=$(bash "$launch" -n 2 --addr 7000 -- bash -c 'echo "$ECOPT_JOB_TOKEN"' | sed 's/^\[rank .\] //' | sort -u)
[[ $(wc -l <<<"$tokens") == 1 ]] || fail "ranks of one job got different job tokens: $tokens"
# The token is the job's secret: 32 random bytes in hex, another one per launch.
[[ "$tokens" =~ ^[0-9a-f]{64}$ ]] || fail "job token '$tokens' is not 64 hex digits"
again=$(bash "$launch" -n 1 -- bash -c 'echo "$ECOPT_JOB_TOKEN"' | sed 's/^\[rank .\] //')
[[ "$again" =~ ^[0-9a-f]{64}$ && "$again" != "$tokens" ]] || fail "two launches got job tokens '$tokens' and '$again'"

# Port 0: rank 0 reports its port through ECOPT_PORT_FILE; the others start
# with it in ECOPT_ADDR.
out=$(bash "$launch" -n 2 -- bash -c \
  'if [[ $ECOPT_RANK == 0 ]]; then echo 4321 >"$ECOPT_PORT_FILE"; fi; echo "addr $ECOPT_ADDR"' 2>&1)
expect_status 0 $? "port file"
expect_line "$out" '^\[rank 1\] addr 127\.0\.0\.1:4321$' "rank 1's address from rank 0's port file"

# A partial last line is printed too; stderr stays stderr.
out=$(bash "$launch" -n 1 -- bash -c 'printf "no newline"; echo oops >&2' 2>/dev/null)
expect_line "$out" '^\[rank 0\] no newline$' "partial last line"
[[ "$out" != *oops* ]] || fail "stderr went to stdout"

# A failing rank: its status is the launcher's, and the ranks still running
# are stopped (well before their 60 s sleep ends).
start=$SECONDS
out=$(bash "$launch" -n 3 --addr 7000 -- \
  bash -c 'if [[ $ECOPT_RANK == 1 ]]; then exit 7; fi; sleep 60' 2>&1)
expect_status 7 $? "a rank exiting with status 7"
expect_line "$out" 'rank 1 exited with status 7; stopping the other ranks' "failure message"
((SECONDS - start < 30)) || fail "the other ranks were not stopped ($((SECONDS - start)) s)"

# A rank killed by a signal: 128 + the signal's number.
bash "$launch" -n 2 --addr 7000 -- bash -c 'if [[ $ECOPT_RANK == 0 ]]; then kill -KILL $$; fi; sleep 60' 2>/dev/null
expect_status 137 $? "a rank killed by SIGKILL"

# kill -9 of rank 1: rank 0 sees its link close (a FIFO standing in for a socket)
# and fails at once, with status 1 or by SIGABRT (an uncaught transport_error).
# The launcher names rank 1 and its signal and exits with 137, whichever of the
# two it finds ended first.
links=$(mktemp -d "${TMPDIR:-/tmp}/launcher_test.XXXXXX")
for i in 1 2 3 4; do
  mkfifo "$links/link$i"
  how=$([[ $((i % 2)) == 1 ]] && echo 'exit 1' || echo 'kill -ABRT $$')
  out=$(LINK="$links/link$i" HOW="$how" bash "$launch" -n 3 --addr 7000 -- bash -c '
    case $ECOPT_RANK in
      0) exec 3<"$LINK"; cat <&3 >/dev/null; echo "peer gone" >&2; eval "$HOW" ;;
      1) exec 3>"$LINK"; sleep 0.2; kill -KILL $$ ;;
      *) sleep 60 ;;
    esac' 2>&1)
  expect_status 137 $? "kill -9 of rank 1, rank 0 failing because of it with '$how'"
  expect_line "$out" 'rank 1 was killed by signal 9 \(SIGKILL\), status 137; stopping the other ranks' \
    "the killed rank named with its signal (rank 0: '$how')"
  expect_line "$out" '^\[rank 0\] peer gone$' "rank 0 failed after it ('$how')"
done
rm -rf "$links"

# The job timeout names the ranks still running and exits with 124.
start=$SECONDS
out=$(bash "$launch" -n 3 --addr 7000 --timeout 2 -- \
  bash -c 'if [[ $ECOPT_RANK == 2 ]]; then sleep 60; fi' 2>&1)
expect_status 124 $? "job timeout"
expect_line "$out" 'timed out after 2 s; ranks still running: 2;' "timeout message"
((SECONDS - start < 30)) || fail "the timeout did not stop the job ($((SECONDS - start)) s)"

# Many short jobs in a row: none may hang or lose a rank's exit.
for i in $(seq 20); do
  bash "$launch" -n 4 --addr 7000 --timeout 30 -- bash -c 'exit 0' >/dev/null 2>&1 ||
    { fail "short job $i: status $?"; break; }
done

# Bad arguments: status 2 and a message naming the argument.
for args in "-n 0 -- true" "-n x -- true" "-n 2" "-n 2 --addr host: -- true" "-n 2 --timeout -1 -- true"; do
  # shellcheck disable=SC2086  # (the words are the arguments)
  msg=$(bash "$launch" $args 2>&1 >/dev/null)
  expect_status 2 $? "arguments '$args'"
  expect_line "$msg" 'ecopt-launch: ' "message for arguments '$args'"
done

if ((failures > 0)); then
  echo "launcher_test: $failures failure(s)" >&2
  exit 1
fi
echo "launcher_test: all checks passed"
