#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for a bounded time (see SECURITY.md).
#
#   scripts/fuzz.sh                 # every target, 30 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh relay_frame config
#
# Only a stable toolchain is assumed: cargo-fuzz needs nightly-only flags
# (-Zsanitizer), which RUSTC_BOOTSTRAP=1 unlocks on stable. The committed
# seeds in fuzz/corpus/<target> are read, never written: new inputs go to
# target/fuzz-corpus/<target>. A crash leaves its input in
# fuzz/artifacts/<target>/ and makes this script exit non-zero; turn it into
# a regression test next to the code before fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds="${FUZZ_SECONDS:-30}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz (compiles from source, a few minutes)"
  cargo install --locked cargo-fuzz
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

echo "== building the fuzz targets"
cargo fuzz build --fuzz-dir fuzz

failed=()
for target in "${targets[@]}"; do
  printf '\n== fuzz %s for %ss\n' "$target" "$seconds"
  work="$root/target/fuzz-corpus/$target"
  mkdir -p "$work"
  log="$root/target/fuzz-$target.log"
  rc=0
  cargo fuzz run --fuzz-dir fuzz "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY)|panicked at|^==[0-9]+== ?ERROR' "$log" || true
  if [ "$rc" -ne 0 ]; then
    tail -n 30 "$log"
    failed+=("$target")
  fi
done

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/, logs in target/fuzz-*.log)"
  exit 1
fi
echo "all ${#targets[@]} fuzz targets ran ${seconds}s each without a crash"
