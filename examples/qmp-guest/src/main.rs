//! `qmp-guest`: a bare-metal x86-64 guest kernel that QEMU boots directly
//! (`qemu-system-x86_64 -machine pc -kernel qmp-guest`) and that holds a
//! whole QMP session through its 16550 UART with `qmp-embedded`'s blocking
//! client.
//!
//! COM1 (0x3f8) is the link to a QMP monitor: of this same VM (a client
//! chardev socket connected to the VM's own server chardev monitor) or of
//! another QEMU. Each step (handshake, `query-version`, `query-status`,
//! `stop` and its `STOP` event, `cont` and its `RESUME` event, `query-status`
//! again) has a deadline and gets one line on COM2 (0x2f8); at the end the
//! guest writes to the `isa-debug-exit` device (0xf4), so that QEMU exits
//! with status 1 when every step passed and `2 * N + 1` when step N failed.
//! See the README section "A bare-metal guest" for the QEMU command lines.
//!
//! Built for the host target (`x86_64-unknown-linux-gnu`, its `core` only)
//! with its own linker script and entry code (`build.rs`, `guest.ld`): a
//! multiboot image loaded at 1 MiB. All `unsafe` code is in [`boot`] (entry,
//! long mode, stack) and [`hw`] (port I/O, TSC, memory functions); the
//! drivers ([`uart`], [`clock`]), the report ([`report`]) and the session
//! ([`app`]) are safe code.
//!
//! On targets other than x86-64 Linux the binary is an ordinary `std` stub,
//! so that `cargo build` of the workspace works on other hosts.

#![cfg_attr(all(target_arch = "x86_64", target_os = "linux"), no_std, no_main)]
#![deny(unsafe_code)]

// Linked on every target, like qmp-firmware's, so that a `std` feature leaking
// into them fails this build.
use embedded_io as _;
use qmp_embedded as _;
use qmp_proto as _;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod app;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
mod boot;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod clock;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
mod hw;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod report;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod uart;

/// Stand-in entry point on targets the guest is not built for.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn main() {
    eprintln!("qmp-guest: only built as a guest kernel on x86-64 Linux hosts");
    std::process::exit(2);
}
