//! The throwaway-QEMU launcher of `qmp-examples` (the library), against the real binary.

mod common;

use common::TempDir;
use qmp_examples::{ThrowawayQemu, stop_all};
use qmp_std::Options;
use qmp_std::commands::QueryStatus;

/// `TMPDIR` is read by `std::env::temp_dir`, so these tests run the launcher in a child
/// process of their own: the test binary itself, re-run with `--exact` on a helper test.
fn in_child(test: &str, tmp: &TempDir) -> common::Run {
    let me = std::env::current_exe().expect("the test binary");
    let me = me.to_str().expect("a UTF-8 path");
    let mut child = common::spawn(
        me,
        &["--exact", test, "--include-ignored", "--nocapture"],
        Some(tmp),
    );
    drop(child.stdin.take());
    common::finish(child)
}

#[test]
#[ignore = "run by throwaway_qemu_lives_in_tmpdir_and_cleans_up"]
fn child_starts_queries_and_stops() {
    let qemu = ThrowawayQemu::start().expect("start");
    assert!(qemu.socket().starts_with(std::env::temp_dir()));
    let mut client = qemu.connect(Options::default()).expect("connect");
    let status = client.execute(&QueryStatus).expect("query-status");
    assert!(status.running);
    let second = ThrowawayQemu::start().expect("start another");
    assert_ne!(second.socket(), qemu.socket());
    // stop_all stops both; dropping them afterwards is harmless.
    stop_all();
    assert!(!qemu.socket().exists());
    drop((qemu, second));
}

#[test]
fn throwaway_qemu_lives_in_tmpdir_and_cleans_up() {
    let tmp = TempDir::new("launcher");
    let run = in_child("child_starts_queries_and_stops", &tmp);
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    tmp.assert_cleaned_up();
}

#[test]
fn a_comma_in_the_temporary_directory() {
    let tmp = TempDir::new("with,comma");
    let run = in_child("child_starts_queries_and_stops", &tmp);
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    tmp.assert_cleaned_up();
}

#[test]
fn qemu_that_fails_to_start_says_why() {
    let err = ThrowawayQemu::start_program("qemu-system-x86_64", &["-no-such-option"])
        .expect_err("a bad option");
    let text = err.to_string();
    assert!(
        text.starts_with("qemu-system-x86_64 exited during start-up (exit status: 1): "),
        "{text}"
    );
    assert!(text.contains("-no-such-option"), "{text}");
}

#[test]
fn missing_program() {
    let err = ThrowawayQemu::start_program("/nonexistent/qemu", &[] as &[&str])
        .expect_err("no such program");
    assert_eq!(
        err.to_string(),
        "cannot run /nonexistent/qemu: No such file or directory (install the Debian package qemu-system-x86)"
    );
}
