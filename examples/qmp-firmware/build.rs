//! Build script for `qmp-firmware`: link the binary as a freestanding,
//! statically linked, non-PIE executable with no C runtime and no libc.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");

    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch != "x86_64" || os != "linux" {
        // `src/main.rs` builds an ordinary std stub on other targets, which
        // needs the normal C runtime; don't touch its link line.
        return;
    }

    for arg in [
        // No crt1.o/crti.o: `src/sys.rs` provides `_start`.
        "-nostartfiles",
        // No libc, libgcc or libgcc_s: everything comes from core and
        // compiler_builtins, plus the mem* functions in `src/sys/mem.rs`.
        "-nostdlib",
        // A fully static executable ...
        "-static",
        // ... at a fixed address. rustc passes `-pie` to the linker driver;
        // a static PIE would need startup code that applies its own
        // relocations (the panic message's &str pointers live in relocated
        // data), which `_start` does not do. `-no-pie` comes after rustc's
        // `-pie` on the command line and wins, whatever the C compiler's
        // defaults are.
        "-no-pie",
    ] {
        println!("cargo:rustc-link-arg-bin=qmp-firmware={arg}");
    }
}
