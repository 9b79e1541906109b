#!/usr/bin/env bash
# The full test run (CI runs this through .ci/run): installs missing
# dependencies, then runs the configure+build+test workflow presets
#   ci    -- the dev preset's -Werror build and every test (unit, contract, MPI,
#            static compile-fail, packaging, examples), under AddressSanitizer +
#            UBSan: one build does the work of the dev and asan presets
#   tsan  -- ThreadSanitizer; only the tests that run ranks concurrently (threads,
#            TCP processes): ECOPT_TEST_CONCURRENCY_ONLY in the preset
# (see CMakePresets.json; dev and asan remain for day-to-day work). Every
# workflow runs even when an earlier one failed, so one run shows all
# failures; the exit code is non-zero if any did. The last line adds up the
# ctest summaries of the workflows.
#
# Time on a 2-core machine (clean tree): see CHANGELOG.md for the figures per phase.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
export CMAKE_BUILD_PARALLEL_LEVEL=2

logs="build/test-logs"
mkdir -p "$logs"
failed=()
passed_total=0
failed_total=0
for workflow in ci tsan; do
  echo "=== workflow ${workflow} ==="
  start=$SECONDS
  status=0
  cmake --workflow --preset "$workflow" 2>&1 | tee "$logs/${workflow}.log" || status=$?
  # ctest's summary: "100% tests passed, 0 tests failed out of 57"
  summary=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+' \
            "$logs/${workflow}.log" | tail -n 1 || true)
  if [[ -n "$summary" ]]; then
    total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$summary")
    bad=$(sed -E 's/.*, ([0-9]+) tests failed.*/\1/' <<<"$summary")
    passed_total=$((passed_total + total - bad))
    failed_total=$((failed_total + bad))
  fi
  if ((status != 0)); then
    failed+=("$workflow")
    # A workflow that failed before its tests ran (configure or build) counts as one failure.
    [[ -n "$summary" ]] || failed_total=$((failed_total + 1))
  fi
  echo "=== workflow ${workflow}: $([[ $status -eq 0 ]] && echo passed || echo FAILED) in $((SECONDS - start)) s ==="
done

if ((${#failed[@]} > 0)); then
  echo "test.sh: failed workflows: ${failed[*]} (logs in $logs/)"
fi
echo "ecopt: ${passed_total} passed, ${failed_total} failed"
((${#failed[@]} == 0))
