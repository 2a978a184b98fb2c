#!/usr/bin/env bash
# Fuzzes the parsers that read what peers send (fuzz/fuzz_targets): first each target runs once
# over every input in fuzz/regressions/<target> (inputs that once crashed it), then for SECONDS
# (default 60) from its seed corpus in fuzz/corpus/<target>, two targets at a time. Fails on any
# crash, leaving the input in fuzz/artifacts/<target>/: move it to fuzz/regressions/<target>/
# once it is fixed.
#
#   scripts/fuzz.sh          # a minute per target
#   scripts/fuzz.sh 30       # what CI runs
#
# Needs the nightly toolchain (rustup toolchain install nightly) and cargo-fuzz
# (cargo install --locked cargo-fuzz).
set -euo pipefail
seconds="${1:-60}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo/fuzz"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is missing: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is missing: cargo install --locked cargo-fuzz" >&2
  exit 1
fi

# No sanitizer: the code is safe Rust (unsafe_code = forbid); what fuzzing finds here is panics,
# hangs and unbounded memory, which libFuzzer reports without one.
flags=(-s none)
echo "fuzz: building the targets"
cargo +nightly fuzz build "${flags[@]}"
mapfile -t targets < <(cargo +nightly fuzz list)

work="$(mktemp -d "${TMPDIR:-/tmp}/flwr-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

run_target() {
  local t="$1" log="$work/$1.log"
  {
    if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t")" ]; then
      cargo +nightly fuzz run "${flags[@]}" "$t" "regressions/$t" -- -runs=0
    fi
    mkdir -p "$work/corpus-$t"
    cargo +nightly fuzz run "${flags[@]}" "$t" "$work/corpus-$t" "corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
  } >"$log" 2>&1
}

failed=()
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  pids=()
  for t in "${targets[@]:i:2}"; do
    run_target "$t" &
    pids+=("$!:$t")
  done
  for p in "${pids[@]}"; do
    if wait "${p%%:*}"; then
      t="${p#*:}"
      echo "fuzz: $t: $(grep -E '^Done [0-9]+ runs' "$work/$t.log" | tail -n 1)"
    else
      t="${p#*:}"
      failed+=("$t")
      echo "fuzz: $t FAILED; the end of its log:" >&2
      tail -n 40 "$work/$t.log" >&2
    fi
  done
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${seconds} s each, no crash"
