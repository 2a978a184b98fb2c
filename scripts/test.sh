#!/usr/bin/env bash
# The project's test command: prepares the Python side (a venv with flwr==1.28.0), checks the
# system tools the tests use, builds every test of the workspace, and runs them in parallel lanes:
# the slow suites (Docker images, the federations) each in a lane of their own, everything else
# (unit tests, in-process tests, the remaining integration tests, doc tests) in one more. Every
# test binary runs even when another fails; the exit status is non-zero if any failed. Extra
# arguments go to every test binary (for example a test name filter).
#
#   scripts/test.sh                 # everything
#   scripts/test.sh restart         # only tests whose name contains "restart"
#   TEST_LANES=1 scripts/test.sh    # one lane: the binaries one after another
#   TEST_BINARY_TIMEOUT=1500        # seconds one test binary may run before it is stopped
#   TEST_BUDGET=3300                # seconds for all lanes; binaries not started by then fail
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

missing=()
for tool in cargo openssl ssh-keygen setpriv setsid pgrep timeout promtool systemd-analyze dpkg-deb python3 docker docker-compose debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=("PostgreSQL server (initdb)")
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test: missing tools: ${missing[*]}" >&2
  echo "test: on Debian: apt-get install openssl openssh-client util-linux procps coreutils prometheus systemd dpkg python3 python3-venv docker.io docker-compose debootstrap postgresql haproxy" >&2
  exit 1
fi

if ! docker info >/dev/null 2>&1; then
  echo "test: the Docker engine is not reachable (the image tests need it): start dockerd" >&2
  exit 1
fi

FLWR_VENV="$("$repo/scripts/python-env.sh")"
export FLWR_VENV

work="$(mktemp -d "${TMPDIR:-/tmp}/flwr-test.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "test: building every test target"
# --all-features: the `external` tests (Python, Docker, PostgreSQL, HAProxy), which a bare
# `cargo test` leaves out, are built here and always run.
cargo test --workspace --all-features --no-run --message-format=json-render-diagnostics >"$work/build.json"
cargo metadata --no-deps --format-version 1 >"$work/metadata.json"

# Lanes: "<lane> <package> <target>" for the slow suites; every other test binary goes to lane
# "rest". Assigned from cargo's own list of what it built, so a new test file always runs.
python3 - "$work" "${TEST_LANES:-}" <<'EOF'
import json, os, sys
work, one_lane = sys.argv[1], sys.argv[2] == "1"
slow = {
    ("flwr-docker-tests", "docker"): "docker",
    ("flwr-superlink", "federation"): "superlink",
    # After the image tests, in the lane that ends first: Ray starts best on a quieter machine.
    ("flwr-superlink", "simulation"): "docker",
    ("flwr-supernode", "federation"): "supernode",
    ("flwr-superlink", "postgres"): "superlink",
    ("flwr-superlink", "ha"): "supernode",
    ("flwr-superlink", "security"): "superlink",
}
lanes = {}
with open(os.path.join(work, "build.json")) as f:
    for line in f:
        m = json.loads(line)
        if m.get("reason") != "compiler-artifact" or not m.get("executable"):
            continue
        if not m["profile"]["test"]:
            continue
        with open(m["manifest_path"]) as toml:
            pkg = next(l.split('"')[1] for l in toml if l.startswith("name"))
        target = m["target"]["name"]
        lane = "rest" if one_lane else slow.get((pkg, target), "rest")
        where = os.path.dirname(m["manifest_path"])
        lanes.setdefault(lane, []).append(f"{pkg}:{target}\t{where}\t{m['executable']}")
for lane, binaries in lanes.items():
    with open(os.path.join(work, f"lane-{lane}"), "w") as f:
        f.write("\n".join(sorted(binaries)) + "\n")
# Every integration test target of the workspace was built: none is left out by a feature.
with open(os.path.join(work, "metadata.json")) as f:
    declared = {
        f"{p['name']}:{t['name']}"
        for p in json.load(f)["packages"]
        for t in p["targets"]
        if "test" in t["kind"]
    }
built = {b.split("\t")[0] for bs in lanes.values() for b in bs}
if declared - built:
    sys.exit(f"test: test targets not built: {sorted(declared - built)}")
EOF

# Runs the binaries of one lane, one after another, as `cargo test` would (from the package's
# directory); writes the lane's output to its log and the names of failed binaries to its list.
# Each binary reports on standard output as it ends, and none runs past its time: a binary that
# hangs is stopped (with its process group) and named, and its last lines are printed at once, so
# a run that a CI deadline cuts short still says where it stood.
per_binary="${TEST_BINARY_TIMEOUT:-1500}"
deadline=$((SECONDS + ${TEST_BUDGET:-3300}))
run_lane() {
  local lane="$1"; shift
  local log="$work/log-$lane" failed="$work/failed-$lane" start=$SECONDS
  : >"$failed"
  while IFS=$'\t' read -r name dir exe; do
    local out="$work/out-${name//[:\/]/_}" began=$SECONDS limit=$per_binary rc=0
    [ $((deadline - SECONDS)) -ge "$limit" ] || limit=$((deadline - SECONDS))
    if [ "$limit" -le 0 ]; then
      echo "test: [$lane] $name NOT RUN: the test budget (TEST_BUDGET) is spent"
      echo "$name (not run)" >>"$failed"
      continue
    fi
    # In a session of its own, so that whatever it leaves behind (a daemon of a test that was
    # stopped, in a process group of its own) is found by the session id and stopped too.
    (cd "$dir" && exec setsid --wait bash -c 'echo $$ >"$0"; exec timeout --kill-after=30 "$@"' \
      "$out.sid" "$limit" "$exe" "$@") >"$out" 2>&1 || rc=$?
    local sid left
    sid="$(cat "$out.sid" 2>/dev/null || true)"
    # What stops by itself once the binary is gone gets 10 s to do so: the PostgreSQL tests'
    # shared cluster has a watchdog that stops it and removes its files a second or two after.
    if [ -n "$sid" ]; then
      for _ in $(seq 100); do pgrep -s "$sid" >/dev/null || break; sleep 0.1; done
    fi
    if [ -n "$sid" ] && left="$(pgrep -s "$sid" | xargs)" && [ -n "$left" ]; then
      # Named, so that the leak can be found.
      local names
      names="$(ps -o comm= -p "${left// /,}" 2>/dev/null | sort | uniq -c | awk '{print $2 "x" $1}' | xargs)"
      pkill -KILL -s "$sid" || true
      echo "test: [$lane] $name left processes running ($left: ${names:-gone}): stopped"
    fi
    { echo "=== $name ($exe)"; cat "$out"; } >>"$log"
    if [ "$rc" -eq 0 ]; then
      echo "test: [$lane] $name passed in $((SECONDS - began)) s"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      echo "test: [$lane] $name TIMED OUT or KILLED (exit $rc) after $((SECONDS - began)) s; its last lines:"
      tail -n 40 "$out" | sed "s/^/    /"
      echo "$name (timed out)" >>"$failed"
    else
      echo "test: [$lane] $name FAILED (exit $rc) in $((SECONDS - began)) s"
      echo "$name" >>"$failed"
    fi
  done <"$work/lane-$lane"
  if [ "$lane" = rest ]; then
    if timeout --kill-after=30 "$per_binary" cargo test --workspace --doc --quiet >>"$log" 2>&1; then
      echo "test: [$lane] doc tests passed"
    else
      echo "test: [$lane] doc tests FAILED"
      echo "doc tests" >>"$failed"
    fi
  fi
  echo "test: lane $lane finished in $((SECONDS - start)) s" | tee -a "$log"
}

pids=()
for lane_file in "$work"/lane-*; do
  lane="${lane_file##*/lane-}"
  echo "test: lane $lane: $(cut -f1 "$lane_file" | xargs)"
  run_lane "$lane" "$@" &
  pids+=("$!")
done
for pid in "${pids[@]}"; do wait "$pid" || true; done

status=0
for lane_file in "$work"/lane-*; do
  lane="${lane_file##*/lane-}"
  echo
  echo "================ lane $lane"
  cat "$work/log-$lane"
  if [ -s "$work/failed-$lane" ]; then
    status=1
  fi
done
echo
if [ "$status" -ne 0 ]; then
  echo "test: FAILED: $(cat "$work"/failed-* | xargs)" >&2
else
  echo "test: every test binary passed"
fi
exit "$status"
