//! `qmp-firmware`: a freestanding x86-64 Linux program with no libc and no
//! `std`.
//!
//! It has its own `_start`, talks to the kernel with raw `syscall`
//! instructions and is linked statically with `-nostartfiles -nostdlib`
//! (see `build.rs`). File descriptors 0 and 1 will later carry a QMP session
//! over a serial link, driven by the `no_std` crates `qmp-proto` and
//! `qmp-embedded`; for now it echoes one line.
//!
//! All `unsafe` code lives in [`sys`]; everything else is safe code.
//!
//! On targets other than x86-64 Linux the binary is an ordinary `std` stub
//! that refuses to run, so that `cargo build` of the whole workspace keeps
//! working on other development hosts.

#![cfg_attr(all(target_arch = "x86_64", target_os = "linux"), no_std, no_main)]
#![deny(unsafe_code)]

// Link the no_std crates the firmware is built on (nothing is called yet).
// Linking them also makes a `std` feature that leaks into their dependencies
// through Cargo's workspace feature unification fail this build, instead of
// going unnoticed.
use qmp_embedded as _;
use qmp_proto as _;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod app;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
mod sys;

/// Stand-in entry point on targets the firmware does not support.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn main() {
    eprintln!("qmp-firmware: only x86-64 Linux is supported");
    std::process::exit(2);
}
