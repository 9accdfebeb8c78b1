//! The hardware access of the guest, and the only other `unsafe` code beside
//! [`crate::boot`]: x86 port I/O, the time-stamp counter, an atomic burst of
//! UART writes, and the memory functions the compiler calls.
//!
//! Port I/O cannot touch memory unless the device behind the port does DMA,
//! so the safe wrappers here allow only the ports of the devices the guest
//! drives, none of which do: the two 16550 UARTs (0x3f8–0x3ff, 0x2f8–0x2ff),
//! the PIT (0x40–0x43), the speaker/gate port 0x61 and `isa-debug-exit`
//! (0xf4). Any other port panics.

use core::arch::asm;

#[path = "../../qmp-firmware/src/sys/mem.rs"]
mod mem;

/// Whether `port` belongs to a device this module may drive.
const fn allowed(port: u16) -> bool {
    matches!(port, 0x3f8..=0x3ff | 0x2f8..=0x2ff | 0x40..=0x43 | 0x61 | 0xf4..=0xf7)
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    assert!(allowed(port), "port not allowed");
    let value: u8;
    // SAFETY: reading one of the allowed ports (see the module docs) has no
    // effect on memory; `in` touches only al and dx.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags));
    }
    value
}

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    assert!(allowed(port), "port not allowed");
    // SAFETY: writing one of the allowed ports (see the module docs) has no
    // effect on memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
    }
}

/// Writes a 32-bit word to an I/O port.
pub fn outl(port: u16, value: u32) {
    assert!(allowed(port), "port not allowed");
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags));
    }
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` only reads the counter into edx:eax (CR4.TSD is off, so
    // it is allowed at any privilege level).
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The most bytes [`burst`] writes at once.
pub const BURST: usize = 64;

/// Writes `bytes` (at most [`BURST`] of them, the rest is ignored) to `port`
/// one after the other, as one straight run of `lodsb; out dx, al` pairs with
/// no branch between them, and returns how many it wrote.
///
/// Why straight-line code: under QEMU's TCG a virtual CPU checks for a request
/// to stop only between translated blocks, and a block ends at a branch, so a
/// run without branches is never stopped midway. A guest that tells its own
/// VM to `stop` and `cont` in one burst therefore always gets both commands
/// out before it is stopped (see `crate::uart`). Measured with wiring (1) of
/// the README: with this burst 100 boots of 100 passed; with the same bytes
/// written by a loop (a branch after each byte), 20 boots of 30 hung, stopped
/// before the `cont` was out. Under KVM a CPU leaves the guest at every `out`
/// and can be stopped there, so this holds for TCG only.
pub fn burst(port: u16, bytes: &[u8]) -> usize {
    assert!(allowed(port), "port not allowed");
    let n = bytes.len().min(BURST);
    // SAFETY: the computed jump lands on one of the `BURST` two-byte
    // `lodsb; out dx, al` pairs (`lodsb` is 1 byte, `out dx, al` 1 byte), the
    // `n`-th from the end, so exactly `n` bytes are read from `bytes` (valid
    // for `n <= bytes.len()` reads) and written to an allowed port. The
    // direction flag is clear (the ABI requires it), so `lodsb` walks
    // upwards. rsi, al and the scratch register are declared clobbered.
    // (The burst must stay one translated block: no branch, no page-sized
    // code; 128 bytes of `.rept` are far below TCG's limits.)
    unsafe {
        asm!(
            "lea {target}, [rip + 3f]",
            "sub {target}, {twice_n}",
            "jmp {target}",
            ".rept {burst}",
            "lodsb",
            "out dx, al",
            ".endr",
            "3:",
            target = out(reg) _,
            twice_n = in(reg) 2 * n,
            burst = const BURST,
            in("dx") port,
            inout("rsi") bytes.as_ptr() => _,
            out("al") _,
            // Not `preserves_flags`: the `sub` sets them.
            options(readonly, nostack),
        );
    }
    n
}

/// Ends the VM through QEMU's `isa-debug-exit` device (`-device
/// isa-debug-exit,iobase=0xf4,iosize=4`): QEMU exits with status `2 * code +
/// 1`. Without the device, the guest halts for good.
pub fn exit(code: u32) -> ! {
    outl(0xf4, code);
    loop {
        // SAFETY: `cli; hlt` stops the CPU until an NMI, touching nothing.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
