#!/usr/bin/env bash
# Renders the runs of a result CSV (ecopt::write_csv: run,step,loss,payload_bits,
# wire_bits,modelled_seconds; the examples' --csv) as PNG plots with gnuplot:
#   PREFIX-loss-vs-steps.png    training loss against the step
#   PREFIX-loss-vs-bits.png     against the payload bits one worker sent (log scale)
#   PREFIX-loss-vs-time.png     against the modelled seconds, when the runs have them
# One line per run; RUNS, an extended regular expression, keeps only the runs
# whose names match it (e.g. 'seed 1$').
#
#   scripts/plot.sh results.csv docs/img/demo ['RUNS']
#
# Needs gnuplot (Debian package gnuplot-nox; scripts/install-deps.sh installs it).
set -euo pipefail

usage() {
  echo "usage: plot.sh RESULTS.csv OUTPUT_PREFIX [RUN_REGEX]" >&2
  exit 2
}
(($# >= 2 && $# <= 3)) || usage
csv="$1"
prefix="$2"
filter="${3:-.}"
[[ -r "$csv" ]] || { echo "plot.sh: cannot read $csv" >&2; exit 2; }
command -v gnuplot > /dev/null ||
  { echo "plot.sh: gnuplot is not installed (Debian package gnuplot-nox)" >&2; exit 2; }
header="$(head -n 1 "$csv")"
[[ "$header" == run,step,loss,payload_bits,wire_bits,modelled_seconds* ]] ||
  { echo "plot.sh: $csv is not an ecopt result CSV (header: $header)" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# One data file per run (in the order the runs first appear); a quoted run
# name (write_csv quotes names with commas or quotes) is unquoted.
awk -v dir="$work" -v filter="$filter" '
  NR == 1 { next }
  {
    line = $0
    if (substr(line, 1, 1) == "\"") {
      name = ""; i = 2
      while (i <= length(line)) {
        c = substr(line, i, 1)
        if (c == "\"" && substr(line, i + 1, 1) == "\"") { name = name "\""; i += 2; continue }
        if (c == "\"") break
        name = name c; i++
      }
      rest = substr(line, i + 2)
    } else {
      name = substr(line, 1, index(line, ",") - 1)
      rest = substr(line, index(line, ",") + 1)
    }
    if (name !~ filter) next
    if (!(name in id)) { id[name] = ++runs; print name > (dir "/names") }
    n = split(rest, f, ",")
    if (n < 5) { printf "plot.sh: line %d has %d fields\n", NR, n + 1 > "/dev/stderr"; exit 3 }
    print f[1], f[2], f[3], f[5] > (dir "/run" id[name] ".dat")
    if (f[5] + 0 > 0) timed = 1
  }
  END { if (timed) print "yes" > (dir "/timed") }
' "$csv"
[[ -s "$work/names" ]] || { echo "plot.sh: no run in $csv matches '$filter'" >&2; exit 2; }

# plot_one OUTPUT XCOLUMN XLABEL [logscale]
plot_one() {
  local out="$1" column="$2" label="$3" log="${4:-}"
  {
    echo "set terminal pngcairo size 900,560 noenhanced font 'Sans,10'"
    echo "set output '$out'"
    echo "set xlabel '$label'"
    echo "set ylabel 'training loss'"
    echo "set logscale y"
    [[ -n "$log" ]] && echo "set logscale x"
    echo "set key outside right top"
    echo "set grid"
    echo "set colorsequence podo"
    local plots=() i=0
    while IFS= read -r name; do
      i=$((i + 1))
      # Eight colours, then the same colours dashed.
      local style="lt $(((i - 1) % 8 + 1)) dt $(((i - 1) / 8 + 1))"
      local title="${name//\'/\'\'}"
      # Zero x cannot be drawn on a log scale: the first point then starts at the next.
      if [[ -n "$log" ]]; then
        plots+=("'$work/run$i.dat' using (\$$column > 0 ? \$$column : NaN):2 with linespoints $style pt 7 ps 0.5 title '$title'")
      else
        plots+=("'$work/run$i.dat' using $column:2 with linespoints $style pt 7 ps 0.5 title '$title'")
      fi
    done < "$work/names"
    local joined
    joined="$(printf '%s, ' "${plots[@]}")"
    echo "plot ${joined%, }"
  } > "$work/script.gp"
  gnuplot "$work/script.gp"
  echo "plot.sh: wrote $out"
}

mkdir -p "$(dirname "$prefix")"
plot_one "$prefix-loss-vs-steps.png" 1 "step"
plot_one "$prefix-loss-vs-bits.png" 3 "payload bits sent by one worker" log
if [[ -f "$work/timed" ]]; then
  plot_one "$prefix-loss-vs-time.png" 4 "modelled seconds"
fi
