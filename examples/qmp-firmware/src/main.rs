//! `qmp-firmware`: a freestanding x86-64 Linux program with no libc and no
//! `std`.
//!
//! It has its own `_start`, talks to the kernel with raw `syscall`
//! instructions and is linked statically with `-nostartfiles -nostdlib`
//! (see `build.rs`). File descriptors 0 and 1 carry a QMP session over a
//! serial link (typically a pty to QEMU's `-chardev pty` monitor), driven by
//! `qmp-embedded`'s blocking client on top of the sans-IO `qmp-proto`; each
//! step is reported on fd 2, and the exit status says whether the whole
//! session went as expected (see [`app`]).
//!
//! ```text
//! qemu-system-x86_64 -machine none -nodefaults -display none \
//!     -chardev pty,id=ser0 -mon chardev=ser0,mode=control   # prints /dev/pts/N
//! qmp-firmware </dev/pts/N >/dev/pts/N
//! ```
//!
//! All `unsafe` code lives in [`sys`]; everything else is safe code: the link
//! and clock ([`link`]), the report lines ([`line`](mod@line)) and the session
//! ([`app`]).
//!
//! On targets other than x86-64 Linux the binary is an ordinary `std` stub
//! that refuses to run, so that `cargo build` of the whole workspace keeps
//! working on other development hosts.

#![cfg_attr(all(target_arch = "x86_64", target_os = "linux"), no_std, no_main)]
#![deny(unsafe_code)]

// The no_std crates the firmware is built on are linked on every target, so
// that a `std` feature leaking into their dependencies through Cargo's
// workspace feature unification fails this build instead of going unnoticed.
use embedded_io as _;
use qmp_embedded as _;
use qmp_proto as _;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod app;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod line;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod link;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
mod sys;

/// Stand-in entry point on targets the firmware does not support.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn main() {
    eprintln!("qmp-firmware: only x86-64 Linux is supported");
    std::process::exit(2);
}
