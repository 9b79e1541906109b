#!/usr/bin/env bash
# scripts/plot.sh on a small result CSV: three PNGs (the runs have modelled
# time), a quoted run name with a comma, the run filter, and a refused file.
set -euo pipefail
plot="$1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/small.csv" <<'CSV'
run,step,loss,payload_bits,wire_bits,modelled_seconds
dense,0,2.3,0,0,0
dense,10,1.1,3200,3300,0.5
dense,20,0.7,6400,6600,1.0
"top_k 1%, error feedback",0,2.3,0,0,0
"top_k 1%, error feedback",10,1.3,400,420,0.1
"top_k 1%, error feedback",20,0.8,800,840,0.2
CSV
bash "$plot" "$work/small.csv" "$work/out/small"
for kind in steps bits time; do
  file="$work/out/small-loss-vs-$kind.png"
  [[ -s "$file" ]] || { echo "missing $file"; exit 1; }
  [[ "$(head -c 4 "$file" | od -An -tx1 | tr -d ' ')" == 89504e47 ]] || { echo "$file is not a PNG"; exit 1; }
done
# The filter keeps one run; a filter that keeps none is an error naming it.
bash "$plot" "$work/small.csv" "$work/one/small" '^dense$'
[[ -s "$work/one/small-loss-vs-bits.png" ]]
if bash "$plot" "$work/small.csv" "$work/none/small" '^nothing$' 2> "$work/err"; then
  echo "a filter that matches no run was accepted"; exit 1
fi
grep -q "no run" "$work/err"
# A file that is not a result CSV is refused, naming what it saw.
printf 'a,b\n1,2\n' > "$work/bad.csv"
if bash "$plot" "$work/bad.csv" "$work/bad/x" 2> "$work/err"; then
  echo "a CSV without the result header was accepted"; exit 1
fi
grep -q "not an ecopt result CSV" "$work/err"
echo "plot_test: ok"
