//! The only `unsafe` code of the firmware: the process entry point and raw
//! Linux x86-64 system calls, wrapped in safe functions.
//!
//! Nothing here depends on libc; the kernel ABI is used directly:
//! the syscall number goes in `rax`, arguments in `rdi`, `rsi`, `rdx`, the
//! result comes back in `rax` (`-4095..=-1` is `-errno`), and the `syscall`
//! instruction clobbers `rcx` and `r11`.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::{asm, naked_asm};
use core::{fmt, ptr};

mod mem;

/// `read(2)`.
const SYS_READ: usize = 0;
/// `write(2)`.
const SYS_WRITE: usize = 1;
/// `exit_group(2)`: ends every thread of the process.
const SYS_EXIT_GROUP: usize = 231;

/// A file descriptor number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fd(pub i32);

impl Fd {
    /// Standard input.
    pub const STDIN: Self = Self(0);
    /// Standard output.
    pub const STDOUT: Self = Self(1);
    /// Standard error.
    pub const STDERR: Self = Self(2);
}

/// An error number returned by a failed system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// Interrupted system call; the call may simply be repeated.
    pub const EINTR: Self = Self(4);
    /// I/O error; also used when `write` makes no progress.
    pub const EIO: Self = Self(5);
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "errno {}", self.0)
    }
}

/// Turns a raw syscall return value into a byte count or an [`Errno`].
fn check(ret: isize) -> Result<usize, Errno> {
    if (-4095..0).contains(&ret) {
        // The range check makes the cast lossless.
        Err(Errno(-ret as i32))
    } else {
        Ok(ret.cast_unsigned())
    }
}

/// Executes a three-argument system call.
///
/// # Safety
///
/// The caller must make sure that the call with these arguments is sound,
/// e.g. that pointer arguments are valid for what the kernel does with them.
unsafe fn syscall3(nr: usize, a1: usize, a2: usize, a3: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller vouches for the arguments; the asm follows the
    // kernel ABI (rcx and r11 are declared clobbered, the kernel restores
    // rflags from r11 and does not touch the user stack).
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a1,
            in("rsi") a2,
            in("rdx") a3,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack, preserves_flags),
        );
    }
    ret
}

/// Reads up to `buf.len()` bytes from `fd`; `Ok(0)` means end of file.
pub fn read(fd: Fd, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, and the kernel
    // writes at most that many.
    let ret = unsafe {
        syscall3(
            SYS_READ,
            fd.0 as usize,
            buf.as_mut_ptr() as usize,
            buf.len(),
        )
    };
    check(ret)
}

/// Writes up to `buf.len()` bytes to `fd` and returns how many were written.
pub fn write(fd: Fd, buf: &[u8]) -> Result<usize, Errno> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes, and the kernel
    // reads at most that many.
    let ret = unsafe { syscall3(SYS_WRITE, fd.0 as usize, buf.as_ptr() as usize, buf.len()) };
    check(ret)
}

/// Writes all of `buf` to `fd`, retrying short writes and `EINTR`.
pub fn write_all(fd: Fd, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match write(fd, buf) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

/// Ends the process with exit status `code` (only the low 8 bits count).
pub fn exit(code: i32) -> ! {
    // SAFETY: exit_group takes no pointers and does not return; nothing is
    // left to clean up (no libc buffers, no destructors we rely on).
    unsafe {
        asm!(
            "syscall",
            in("rax") SYS_EXIT_GROUP,
            in("rdi") code as isize,
            options(noreturn, nostack),
        );
    }
}

/// Unbuffered [`fmt::Write`] adapter that sends everything to a file
/// descriptor with [`write_all`].
#[derive(Debug, Clone, Copy)]
pub struct FdWriter(pub Fd);

impl fmt::Write for FdWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_all(self.0, s.as_bytes()).map_err(|_| fmt::Error)
    }
}

/// Process entry point, jumped to by the kernel.
///
/// At entry `rsp` points at `argc` (followed by `argv`, `envp` and the
/// auxiliary vector), there is no return address, and the ABI wants the
/// stack 16-byte aligned before a `call`. `rbp` is zeroed to mark the
/// outermost frame for debuggers.
///
/// # Safety
///
/// Only the kernel may call this, once, at process start (it abandons the
/// caller's stack frame).
// SAFETY (attributes): `_start` is not defined anywhere else
// (`-nostartfiles`); the body is only an asm block that never returns
// (`rust_start` diverges, `ud2` traps if it somehow did).
#[unsafe(naked)]
#[unsafe(no_mangle)]
unsafe extern "C" fn _start() -> ! {
    naked_asm!(
        "xor ebp, ebp",
        "and rsp, -16",
        "call {rust_start}",
        "ud2",
        rust_start = sym rust_start,
    )
}

/// First Rust code to run: runs the firmware and exits with its status.
extern "C" fn rust_start() -> ! {
    exit(crate::app::run())
}

/// Never called; exists only so that the link succeeds.
///
/// `core` is precompiled with `panic = "unwind"`, so its unwind tables name
/// `rust_eh_personality` even though this program aborts on panic and links
/// no unwinder. No unwinder means nothing can call this; if something did,
/// it ends the process like a failed `abort()` would.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() -> ! {
    exit(134)
}

/// Global allocator that refuses every request.
///
/// The firmware never allocates, but the `alloc` crate can still end up in
/// its crate graph: Cargo unifies features across all workspace members built
/// together, and e.g. `serde_json` (for `qmp-std`) cannot be built without
/// `serde_core/alloc`. A binary that links `alloc` but has no
/// `#[global_allocator]` fails to build ("no global memory allocator found"),
/// so this one exists. Any allocation attempt fails, which ends in the
/// panic handler with "memory allocation of N bytes failed" and exit status
/// 101.
struct NoAlloc;

// SAFETY: a null return from `alloc` is the documented way to report
// failure, and `dealloc` is never called because nothing is ever allocated.
unsafe impl GlobalAlloc for NoAlloc {
    unsafe fn alloc(&self, _layout: Layout) -> *mut u8 {
        ptr::null_mut()
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

/// See [`NoAlloc`].
#[global_allocator]
static ALLOCATOR: NoAlloc = NoAlloc;
