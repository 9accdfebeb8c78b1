//! `qmp-shell` and `vm-info` against a real QEMU whose monitor speaks TLS
//! (`tls-creds-x509` with `verify-peer=on`; certificates made by `openssl`, see
//! `qmp_e2e::tls`): the `--tls-*` options and the `tls:HOST:PORT` address.

mod common;

use common::{TempDir, run};
use qmp_e2e::tls::{Pki, SERVER_NAME, start_qemu};

const SHELL: &str = env!("CARGO_BIN_EXE_qmp-shell");
const VM_INFO: &str = env!("CARGO_BIN_EXE_vm-info");

#[test]
fn shell_and_vm_info_over_tls() {
    let tmp = TempDir::new("tls");
    let pki = Pki::create(tmp.path()).expect("make certificates");
    let (qemu, addr) = start_qemu(&pki).expect("start QEMU with a TLS monitor");
    let file = |name: &str| pki.file(name).to_string_lossy().into_owned();
    let (ca, cert, key) = (
        file("ca-cert.pem"),
        file("client-cert.pem"),
        file("client-key.pem"),
    );
    let tls_flags = ["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key];

    // HOST:PORT and the flags.
    let mut args = tls_flags.to_vec();
    let plain_addr = addr.to_string();
    args.push(&plain_addr);
    let out = run(
        SHELL,
        &args,
        "query-status\nstop\nquery-status\ncont\n",
        None,
    );
    out.assert_clean();
    let lines = out.lines();
    assert!(
        lines[0].contains(r#""status": "running""#),
        "{}",
        out.stdout
    );
    assert!(
        lines.iter().any(|l| l.contains(r#""status": "paused""#)),
        "{}",
        out.stdout
    );
    assert!(
        lines.iter().any(|l| l.contains(r#""event": "STOP""#)),
        "{}",
        out.stdout
    );

    // tls:HOST:PORT with the name override, `--opt=value` forms.
    let tls_addr = format!("tls:{addr}");
    let name = format!("--tls-name={SERVER_NAME}");
    let ca_eq = format!("--tls-ca={ca}");
    let out = run(
        VM_INFO,
        &[
            &ca_eq,
            &name,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            &tls_addr,
        ],
        "",
        None,
    );
    out.assert_clean();
    assert!(out.stdout.starts_with("QEMU    7."), "{}", out.stdout);
    assert!(out.stdout.contains("Status  running"), "{}", out.stdout);

    // A failed check is said in one line, with the exit status of a failed connection.
    let out = run(
        VM_INFO,
        &[
            "--tls-ca",
            &ca,
            "--tls-name=elsewhere.test",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            &tls_addr,
        ],
        "",
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("another name"), "{}", out.stderr);
    // No client certificate: QEMU hangs up.
    let out = run(SHELL, &["--tls-ca", &ca, &tls_addr], "query-status\n", None);
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.contains("client certificate"), "{}", out.stderr);

    // Usage errors.
    let out = run(VM_INFO, &["--tls-ca", &ca], "", None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("need an ADDRESS"), "{}", out.stderr);
    let out = run(SHELL, &["--tls-cert", &cert, &tls_addr], "", None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run(VM_INFO, &["--help"], "", None);
    assert!(out.stdout.contains("--tls-name NAME"), "{}", out.stdout);
    drop(qemu);
}
