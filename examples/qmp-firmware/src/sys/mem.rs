//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`.
//!
//! The compiler emits calls to these for copies, fills and comparisons of
//! memory, and `core` calls them too. Normally libc provides them; on
//! `x86_64-unknown-linux-gnu` the `compiler_builtins` crate does *not* (it only
//! does on targets without a libc), so a `-nostdlib` link fails with
//! "undefined symbol: memset" without this module.
//!
//! They must not be written as plain byte loops: LLVM recognises such loops
//! as "memset/memcpy idioms" and replaces them with a call to `memset` /
//! `memcpy`, i.e. with infinite recursion. So copies and fills use the x86
//! string instructions in inline asm (which the optimiser cannot rewrite, and
//! which are fast on CPUs with ERMSB), and the comparisons use volatile reads
//! (which it may not merge or turn into a library call).

use core::arch::asm;
use core::ffi::c_int;

/// Copies `n` bytes from `src` to `dest`, which must not overlap.
///
/// # Safety
///
/// `src` must be valid for reads and `dest` valid for writes of `n` bytes,
/// and the two regions must not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both regions are valid for `n` bytes.
    // `rep movsb` copies rcx bytes from [rsi] to [rdi] upwards (the ABI
    // guarantees the direction flag is clear); it changes no status flags.
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
    dest
}

/// Copies `n` bytes from `src` to `dest`; the regions may overlap.
///
/// # Safety
///
/// `src` must be valid for reads and `dest` valid for writes of `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // `dest` is below `src`, or the regions don't overlap: copying
        // upwards never overwrites a source byte before it has been read.
        // SAFETY: same contract as `memcpy`, and the copy direction is safe
        // for this overlap.
        unsafe { memcpy(dest, src, n) }
    } else {
        // `dest` is above `src` and overlaps it: copy downwards, starting
        // from the last byte.
        // SAFETY: the caller guarantees both regions are valid for `n` bytes,
        // and here `n > 0` so `n - 1` does not underflow and the start
        // pointers are the last bytes of the regions. `std` makes
        // `rep movsb` count downwards; `cld` restores the direction flag,
        // which the ABI requires to be clear.
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dest.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _,
                options(nostack),
            );
        }
        dest
    }
}

/// Fills `n` bytes at `dest` with the byte `c` (converted to `u8`).
///
/// # Safety
///
/// `dest` must be valid for writes of `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: c_int, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `dest` is valid for `n` bytes. `rep
    // stosb` stores al into rcx bytes upwards from [rdi]; it changes no
    // status flags. Truncating `c` to its low byte is what C specifies.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            in("al") c as u8,
            options(nostack, preserves_flags),
        );
    }
    dest
}

/// Compares `n` bytes as unsigned chars; returns <0, 0 or >0 like C.
///
/// # Safety
///
/// `s1` and `s2` must both be valid for reads of `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(s1: *const u8, s2: *const u8, n: usize) -> c_int {
    let mut i = 0;
    while i < n {
        // SAFETY: `i < n`, and the caller guarantees both regions are
        // readable for `n` bytes. Volatile keeps LLVM from recognising the
        // loop and calling `memcmp`/`bcmp` (i.e. this function) instead.
        let (a, b) = unsafe { (s1.add(i).read_volatile(), s2.add(i).read_volatile()) };
        if a != b {
            return c_int::from(a) - c_int::from(b);
        }
        i += 1;
    }
    0
}

/// Like [`memcmp`], but only zero versus non-zero is meaningful.
///
/// # Safety
///
/// Same as [`memcmp`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(s1: *const u8, s2: *const u8, n: usize) -> c_int {
    // SAFETY: same contract as `memcmp`.
    unsafe { memcmp(s1, s2, n) }
}
