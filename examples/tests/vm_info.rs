//! End-to-end tests of the `vm-info` binary against a real QEMU 7.2.

mod common;

use common::{TempDir, address_arg, run};
use qmp_e2e::{Monitor, Qemu};

const VM_INFO: &str = env!("CARGO_BIN_EXE_vm-info");

#[test]
fn throwaway_qemu() {
    let tmp = TempDir::new("vm-info");
    let out = run(VM_INFO, &[], "", Some(&tmp));
    out.assert_clean();
    let lines = out.lines();
    assert!(lines[0].starts_with("QEMU    7.2.22"), "{}", out.stdout);
    assert_eq!(lines[1], "Status  running");
    assert_eq!(lines[2], "Name    -");
    assert_eq!(lines[3], "KVM     enabled: no, present: yes");
    assert!(lines.contains(&"CPUs: none"), "{}", out.stdout);
    assert!(lines.contains(&"Block devices: none"), "{}", out.stdout);
    assert!(lines.contains(&"NICs: none"), "{}", out.stdout);
    tmp.assert_cleaned_up();
}

#[test]
fn cpus_and_block_devices() {
    // A PC machine, not started (-S), with two CPUs, a null disk and an empty CD-ROM drive.
    let qemu = Qemu::builder(Monitor::Unix)
        .args(["-machine", "pc", "-smp", "2", "-name", "test-vm"])
        .args([
            "-drive",
            "if=none,id=disk0,driver=null-co,size=1048576,read-only=on",
        ])
        .args(["-drive", "if=none,id=cd0,media=cdrom"])
        .paused(true)
        .start()
        .unwrap_or_else(|e| panic!("start QEMU: {e}"));
    let out = run(VM_INFO, &[&address_arg(&qemu)], "", None);
    out.assert_clean();
    let text = &out.stdout;
    assert!(text.contains("QEMU    7.2.22"), "{text}");
    assert!(text.contains("Status  prelaunch\n"), "{text}");
    assert!(text.contains("Name    test-vm\n"), "{text}");
    assert!(text.contains("CPUs (2):\n"), "{text}");
    let cpu0 = text
        .lines()
        .find(|l| l.trim_start().starts_with("0 "))
        .unwrap_or_else(|| panic!("no CPU 0 row: {text}"));
    assert!(cpu0.contains("x86_64"), "{cpu0}");
    assert!(cpu0.contains("socket 0, core 0, thread 0"), "{cpu0}");
    assert!(text.contains("Block devices (2):\n"), "{text}");
    let disk = text
        .lines()
        .find(|l| l.trim_start().starts_with("disk0 "))
        .unwrap_or_else(|| panic!("no disk0 row: {text}"));
    for part in ["null-co", "1 MiB", " ro "] {
        assert!(disk.contains(part), "{part:?} not in {disk:?}");
    }
    let cd = text
        .lines()
        .find(|l| l.trim_start().starts_with("cd0 "))
        .unwrap_or_else(|| panic!("no cd0 row: {text}"));
    assert!(cd.ends_with("(no medium)"), "{cd}");
}

#[test]
fn tcp_address() {
    let qemu = Qemu::start(Monitor::Tcp).unwrap_or_else(|e| panic!("start QEMU: {e}"));
    let out = run(VM_INFO, &[&address_arg(&qemu)], "", None);
    out.assert_clean();
    assert!(out.stdout.contains("Status  running\n"), "{}", out.stdout);
}

#[test]
fn bad_address_and_usage() {
    let tmp = TempDir::new("vm-info-bad");
    let path = tmp.path().join("none.sock");
    let out = run(VM_INFO, &[path.to_str().unwrap()], "", None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        format!(
            "vm-info: cannot connect to {}: No such file or directory\n",
            path.display()
        )
    );

    let out = run(VM_INFO, &["--help"], "", None);
    out.assert_clean();
    assert!(out.stdout.starts_with("usage: vm-info [ADDRESS]\n"));

    let out = run(VM_INFO, &["-q"], "", None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stderr.contains("\nusage: vm-info [ADDRESS]\n"),
        "{}",
        out.stderr
    );
}

/// A booted Linux guest (`qmp_e2e::guest`) with two vCPUs and a NIC: running, both CPUs, its
/// disk, its NIC.
#[test]
fn real_linux_guest() {
    let guest = qmp_e2e::guest::Guest::builder()
        .cpus(2)
        .arg("-netdev")
        .arg("hubport,id=net0,hubid=0")
        .arg("-device")
        .arg("virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:12:34:56")
        .boot()
        .unwrap_or_else(|e| panic!("boot the guest: {e}"));
    let out = run(VM_INFO, &[&address_arg(guest.qemu())], "", None);
    out.assert_clean();
    let text = &out.stdout;
    assert!(text.contains("Status  running\n"), "{text}");
    assert!(text.contains("KVM     enabled: no, present: "), "{text}");
    assert!(text.contains("CPUs (2):\n"), "{text}");
    for (index, core) in [("0 ", "core 0"), ("1 ", "core 1")] {
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with(index) && l.contains("x86_64"))
            .unwrap_or_else(|| panic!("no CPU {index}row: {text}"));
        assert!(row.contains(core), "{row}");
    }
    // The guest's virtio-blk disk on a null-co node (no -drive id: QEMU names it by path).
    assert!(text.contains("Block devices (1):\n"), "{text}");
    let disk = text
        .lines()
        .find(|l| l.trim_start().starts_with("/machine/peripheral/vda/"))
        .unwrap_or_else(|| panic!("no vda row: {text}"));
    for part in ["null-co", "64 MiB", " rw "] {
        assert!(disk.contains(part), "{part:?} not in {disk:?}");
    }
    assert!(text.contains("NICs (1):\n"), "{text}");
    let nic = text
        .lines()
        .find(|l| l.trim_start().starts_with("nic0 "))
        .unwrap_or_else(|| panic!("no nic0 row: {text}"));
    assert!(nic.contains("52:54:00:12:34:56"), "{nic}");
}
