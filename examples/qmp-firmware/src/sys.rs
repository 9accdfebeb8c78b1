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
/// `poll(2)`.
const SYS_POLL: usize = 7;
/// `clock_gettime(2)`.
const SYS_CLOCK_GETTIME: usize = 228;
/// `exit_group(2)`: ends every thread of the process.
const SYS_EXIT_GROUP: usize = 231;

/// `CLOCK_MONOTONIC`: time since some unspecified start, never set back.
const CLOCK_MONOTONIC: usize = 1;

/// `poll(2)` event: data to read (or the end of the file).
pub const POLLIN: i16 = 0x1;
/// `poll(2)` event: writing will not block.
pub const POLLOUT: i16 = 0x4;

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
    /// I/O error; also used when `write` makes no progress. A pty's slave
    /// side reads it once the master side (QEMU) is closed.
    pub const EIO: Self = Self(5);
    /// Try again: nothing to read or no room to write right now.
    pub const EAGAIN: Self = Self(11);
    /// Timed out; [`poll`] returning with nothing ready is reported as this.
    pub const ETIMEDOUT: Self = Self(110);
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "errno {}", self.0)
    }
}

impl core::error::Error for Errno {}

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

/// `struct pollfd` of the kernel ABI.
#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

/// Waits up to `timeout_ms` milliseconds (`-1`: forever) until `fd` has one of
/// the `events` ([`POLLIN`], [`POLLOUT`]) or a hang-up or error, and returns
/// the events that occurred (`0`: the time ran out).
pub fn poll(fd: Fd, events: i16, timeout_ms: i32) -> Result<i16, Errno> {
    let mut pfd = PollFd {
        fd: fd.0,
        events,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid, writable `struct pollfd` that outlives the
    // call, and `nfds` is 1; the kernel writes only its `revents`. The
    // timeout is an `int`, sign-extended into the register as the kernel
    // expects.
    let ret = unsafe {
        syscall3(
            SYS_POLL,
            ptr::from_mut(&mut pfd) as usize,
            1,
            timeout_ms as isize as usize,
        )
    };
    check(ret)?;
    Ok(pfd.revents)
}

/// `struct timespec` of the kernel ABI.
#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

/// The time on `CLOCK_MONOTONIC`, in microseconds.
pub fn monotonic_micros() -> Result<u64, Errno> {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `struct timespec` that outlives the
    // call, which writes nothing else. (A raw system call rather than the
    // vDSO: slower, but there is no libc to find the vDSO for us.)
    let ret = unsafe {
        syscall3(
            SYS_CLOCK_GETTIME,
            CLOCK_MONOTONIC,
            ptr::from_mut(&mut ts) as usize,
            0,
        )
    };
    check(ret)?;
    let secs = u64::try_from(ts.tv_sec).map_err(|_| Errno::EIO)?;
    let micros = u64::try_from(ts.tv_nsec / 1000).map_err(|_| Errno::EIO)?;
    Ok(secs.saturating_mul(1_000_000).saturating_add(micros))
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
