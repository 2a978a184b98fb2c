//! A smoke run of the comparison with tiny sizes: every section runs against both
//! implementations and every compared figure comes out (a failure of either side fails here).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::process::Command;
use std::time::Duration;

#[test]
fn the_comparison_runs_every_section_with_tiny_sizes() {
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_flwr-bench"));
    for sibling in ["superlink", "supernode"] {
        let p = bench.with_file_name(sibling);
        assert!(
            p.exists(),
            "{} missing: run the workspace's tests",
            p.display()
        );
    }
    let venv = flwr_testkit::python::venv_bin()
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let (status, stdout) = flwr_testkit::process::run_within(
        Command::new(bench)
            .args(["compare", "--smoke", "--json"])
            .arg(&json)
            .arg("--venv")
            .arg(&venv),
        Duration::from_secs(20 * 60),
    );
    assert!(
        status.success(),
        "flwr-bench compare --smoke failed:\n{stdout}"
    );
    assert!(
        stdout.contains("| workload | metric | Flower 1.28.0 | ours | ours vs Flower |"),
        "{stdout}"
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let workloads: std::collections::BTreeSet<&str> = rows
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    for expected in [
        "SuperLink start-up (TLS, in-memory)",
        "SuperNode start-up (TLS, subprocess isolation)",
        "fan-out 1 KB, N=3, in-memory",
        "fan-out 1 KB, N=3, in-memory, ours with --fleet-auth-per-connection",
        "fan-out 1 MB, N=2, in-memory",
        "fan-out 1 MB, N=2, in-memory, ours with MIMALLOC_PURGE_DELAY=-1",
        "idle fleet, 20 nodes, heartbeat 10s, 3s, ours with --fleet-auth-per-connection",
        "fan-out 1 KB, N=3, SQLite",
        "SuperNode, 1 KB instruction, our SuperLink",
        "whole federation: example app, 1 round(s), 2 SuperNodes, TLS, isolation subprocess",
        "fan-out 1 KB, N=3, PostgreSQL, 1 replica behind HAProxy",
        "fan-out 1 KB, N=3, PostgreSQL, 3 replicas behind HAProxy",
    ] {
        assert!(
            workloads.contains(expected),
            "no `{expected}` rows in {workloads:?}"
        );
    }
    for idle in ["in-memory", "PostgreSQL"] {
        assert!(
            workloads
                .iter()
                .any(|w| w.starts_with("idle fleet, 20 nodes")
                    && w.contains("PostgreSQL") == (idle == "PostgreSQL")),
            "no {idle} idle fleet in {workloads:?}"
        );
    }
    // The idle rows' floor (the bare echo service under the same calls) is measured.
    assert!(
        rows.iter().any(|r| r["workload"]
            == "idle fleet, 20 nodes, heartbeat 10s, 3s, ours with --fleet-auth-per-connection"
            && r["metric"]
                .as_str()
                .unwrap()
                .starts_with("floor: server CPU")
            && r["ceiling"].is_number()),
        "no idle floor in {rows:?}"
    );
    // Our SuperLink keeping the memory it frees is measured against the echo ceiling too.
    assert!(
        rows.iter().any(|r| r["workload"]
            == "fan-out 1 MB, N=2, in-memory, ours with MIMALLOC_PURGE_DELAY=-1"
            && r["metric"].as_str().unwrap().starts_with("ceiling MB/s")
            && r["ceiling"].as_f64().is_some_and(|c| c > 0.0)),
        "no echo ceiling of the kept-memory row in {rows:?}"
    );
    // The spill section's alternated runs: what the files cost (a ceiling of MB/s, a floor of
    // server CPU), and ours against the echo ceiling with and without keeping freed memory.
    for (metric, better) in [
        (
            "payload MB/s with files, median; ceiling: every object",
            "neither",
        ),
        (
            "server CPU (s) with files, median; floor: every object",
            "lower",
        ),
        ("payload MB/s with files, median; ceiling: bare", "neither"),
        (
            "payload MB/s with files and MIMALLOC_PURGE_DELAY=-1, median; ceiling: bare",
            "neither",
        ),
    ] {
        assert!(
            rows.iter().any(|r| r["workload"]
                == "fan-out 1 MB, N=2, in-memory, 1 run of each kind"
                && r["metric"].as_str().unwrap().starts_with(metric)
                && r["better"] == better
                && r["ours"]["value"].is_number()
                && r["ceiling"].is_number()),
            "no spill row `{metric}` in {rows:?}"
        );
    }
    // CPU per message (over every delivered message) has both servers' figures wherever both
    // run (ours may round to nothing in so short a run: CPU time counts in ticks).
    let per_message: Vec<_> = rows
        .iter()
        .filter(|r| {
            r["metric"] == "server CPU per message (ms)"
                && !r["workload"].as_str().unwrap().contains("PostgreSQL")
        })
        .collect();
    assert!(
        !per_message.is_empty(),
        "no CPU-per-message rows in {rows:?}"
    );
    for r in per_message {
        assert!(
            r["flower"]["value"].as_f64().is_some_and(|v| v > 0.0)
                && r["ours"]["value"].as_f64().is_some_and(|v| v >= 0.0),
            "{r}"
        );
    }
    for row in rows {
        if row["ceiling"].is_number() {
            // A ceiling (MB/s) is reached by moving bytes; a floor (CPU, memory of a short idle
            // run) may round to nothing.
            let ours = row["ours"]["value"].as_f64().unwrap();
            if row["better"] == "lower" {
                assert!(ours >= 0.0, "{row}");
            } else {
                assert!(ours > 0.0, "{row}");
            }
            continue;
        }
        let ours_only = row["workload"].as_str().unwrap().contains("PostgreSQL");
        if ours_only {
            // Open-source Flower has no PostgreSQL mode: its cell is empty, not failed.
            assert!(
                row["flower"]["value"].is_null() && row["flower"]["note"].is_null(),
                "{row}"
            );
        }
        let sides: &[&str] = if ours_only {
            &["ours"]
        } else {
            &["flower", "ours"]
        };
        for &side in sides {
            assert!(
                row[side]["value"].is_number(),
                "{side} has no figure in {row}"
            );
            assert!(
                row[side]["note"].is_null() || row["better"] == "neither",
                "{side} is partial in {row}\nflwr-bench's output ends with:\n{}",
                tail(&stdout, 60)
            );
        }
    }
    let fanout_msgs = rows
        .iter()
        .find(|r| r["workload"] == "fan-out 1 KB, N=3, in-memory" && r["metric"] == "msg/s")
        .unwrap();
    assert!(fanout_msgs["ours"]["value"].as_f64().unwrap() > 0.0);
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
