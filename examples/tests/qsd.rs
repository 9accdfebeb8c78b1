//! `qmp-shell` against `qemu-storage-daemon`: the same greeting as QEMU's, block commands
//! and job events, no HMP and no VM commands (see tests/tests/qsd.rs).

mod common;

use common::run;
use qmp_e2e::qsd::Qsd;
use qmp_std::serde_json::{Value, json};

const SHELL: &str = env!("CARGO_BIN_EXE_qmp-shell");

#[test]
fn qmp_shell_runs_a_backup_job_on_the_storage_daemon() {
    let qsd = Qsd::start(
        "shell",
        &[
            "null-co,node-name=src,size=1048576",
            "null-co,node-name=dst,size=1048576",
        ],
    );
    let input = "query-block-jobs\n\
                 blockdev-backup job-id=b device=src target=dst sync=full\n\
                 query-status\n\
                 query-version\n";
    let out = run(SHELL, &[qsd.socket().to_str().unwrap()], input, None);
    // `query-status` is not the storage daemon's: that line fails (CommandNotFound), the
    // next one still runs, and the exit status says a line failed.
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("line 3:"), "{}", out.stderr);
    let lines: Vec<Value> = out
        .lines()
        .iter()
        .map(|l| qmp_std::serde_json::from_str(l).unwrap())
        .collect();
    let replies: Vec<&Value> = lines.iter().filter(|v| v.get("event").is_none()).collect();
    assert_eq!(replies[0], &json!({"return": []}));
    assert_eq!(replies[1], &json!({"return": {}}));
    assert_eq!(replies[2]["error"]["class"], "CommandNotFound");
    assert_eq!(replies[3]["return"]["qemu"]["major"], 7);
    // The job's events, printed as they came.
    assert!(
        lines
            .iter()
            .any(|v| v["event"] == "JOB_STATUS_CHANGE" && v["data"]["id"] == "b"),
        "{}",
        out.stdout
    );
}
