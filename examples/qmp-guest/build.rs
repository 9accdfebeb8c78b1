//! Build script for `qmp-guest`: link the binary as a bare-metal kernel image
//! with its own linker script (`guest.ld`: everything at 1 MiB in one
//! loadable segment), statically, not position-independent, with no C
//! runtime and no libc.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=guest.ld");

    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch != "x86_64" || os != "linux" {
        // `src/main.rs` builds an ordinary std stub on other targets.
        return;
    }
    let script =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by Cargo")).join("guest.ld");
    let script = format!("-Wl,-T,{}", script.display());
    for arg in [
        // No crt1.o/crti.o: `src/boot.rs` provides the entry point.
        "-nostartfiles",
        // No libc, libgcc or libgcc_s: core, compiler_builtins and the mem*
        // functions of `src/hw.rs` are all it needs.
        "-nostdlib",
        // A fully static executable at the fixed addresses of the script
        // (`-no-pie` comes after rustc's `-pie` and wins).
        "-static",
        "-no-pie",
        script.as_str(),
        // The script makes one segment holding code and data together; no
        // RELRO segment, no build-id note (it would land before the
        // multiboot header).
        "-Wl,-z,norelro",
        "-Wl,--build-id=none",
    ] {
        println!("cargo:rustc-link-arg-bin=qmp-guest={arg}");
    }
}
