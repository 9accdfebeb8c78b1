//! Entry code: from QEMU's multiboot hand-over (32-bit protected mode, no
//! paging) to Rust in 64-bit long mode. Also the link-time odds and ends a
//! freestanding binary needs (`rust_eh_personality`, a global allocator).
//!
//! `boot_entry32` (the multiboot header's entry address) runs with
//! interrupts off, flat 32-bit segments of the boot loader's GDT and no stack.
//! It zeroes `.bss` (the statics, the page tables and the stack), identity
//! maps the first 1 GiB with 2 MiB pages (PML4 → PDPT → PD, 12 KiB in
//! `.page_tables`), turns on PAE, long mode (EFER.LME) and paging, loads its
//! own GDT, and jumps to 64-bit code, which turns on SSE (the target's `core`
//! uses SSE registers: CR0.EM off, CR0.MP on, CR4.OSFXSR and OSXMMEXCPT on),
//! loads the data segments and the stack pointer, and calls [`rust_main`].
//! No IDT is loaded: interrupts stay off, and an exception ends in a triple
//! fault, which QEMU turns into a reset (or an exit with `-no-reboot`).

use core::alloc::{GlobalAlloc, Layout};
use core::arch::global_asm;
use core::ptr;

/// Bytes of stack, in its own `.stack` section (reported on its own by the
/// size check). A debug build's frames are several times larger.
const STACK_SIZE: usize = if cfg!(debug_assertions) {
    256 * 1024
} else {
    16 * 1024
};

/// The multiboot (version 1) magic number, in the header.
const MULTIBOOT_MAGIC: u32 = 0x1bad_b002;
/// Header flags: bit 16 only, "the load addresses are in the header" (the
/// a.out kludge), so the loader does not parse the (64-bit) ELF file.
const MULTIBOOT_FLAGS: u32 = 1 << 16;

// SAFETY: this is the program's entry point and its static memory layout; it
// runs once, before any Rust code, on memory the linker script reserves
// (`.page_tables`, `.stack`, and `.bss` between `__bss_start` and
// `__bss_end`, which holds nothing else). The page tables identity map the
// first 1 GiB (the image, its stack, and nothing else is accessed), so
// enabling paging changes no address. `rust_main` never returns; the `ud2`
// after the call traps if it somehow did.
global_asm!(
    r#"
    .section .multiboot, "a"
    .balign 4
multiboot_header:
    .long {magic}
    .long {flags}
    .long -({magic} + {flags})
    .long multiboot_header      /* header_addr */
    .long __image_start         /* load_addr */
    .long __load_end            /* load_end_addr */
    .long __bss_end             /* bss_end_addr */
    .long boot_entry32          /* entry_addr */

    .section .page_tables, "aw", @nobits
    .balign 4096
boot_pml4:
    .space 4096
boot_pdpt:
    .space 4096
boot_pd:
    .space 4096

    .section .stack, "aw", @nobits
    .balign 16
    .global __stack_bottom
__stack_bottom:
    .space {stack_size}
    .global __stack_top
__stack_top:

    .section .rodata
    .balign 8
boot_gdt:
    .quad 0                     /* null */
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code, ring 0 */
    .quad 0x00cf92000000ffff    /* 0x10: data, ring 0 */
boot_gdt_end:
boot_gdt_pointer:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .boot, "ax"
    .code32
    .global boot_entry32
boot_entry32:
    cli
    cld
    /* Zero .bss, .page_tables and .stack (one block). */
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    xor eax, eax
    rep stosb
    /* PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] -> i * 2 MiB (present,
       writable, 2 MiB page). */
    mov eax, offset boot_pdpt
    or eax, 3
    mov dword ptr [boot_pml4], eax
    mov eax, offset boot_pd
    or eax, 3
    mov dword ptr [boot_pdpt], eax
    mov edi, offset boot_pd
    mov eax, 0x83
    mov ecx, 512
2:
    mov dword ptr [edi], eax
    add eax, 0x200000
    add edi, 8
    dec ecx
    jnz 2b
    mov eax, offset boot_pml4
    mov cr3, eax
    /* CR4: PAE (5), OSFXSR (9), OSXMMEXCPT (10). */
    mov eax, cr4
    or eax, 0x620
    mov cr4, eax
    /* EFER.LME (8). */
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x100
    wrmsr
    /* CR0: PG (31), MP (1), PE (0) on; EM (2) off. */
    mov eax, cr0
    and eax, 0xfffffffb
    or eax, 0x80000003
    mov cr0, eax
    /* Compatibility mode now; a far return into the 64-bit code segment. */
    lgdt [boot_gdt_pointer]
    mov eax, 0x08
    push eax
    mov eax, offset boot_entry64
    push eax
    retf

    .code64
boot_entry64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + __stack_top]
    xor ebp, ebp
    call {rust_main}
    ud2
    .text
"#,
    magic = const MULTIBOOT_MAGIC,
    flags = const MULTIBOOT_FLAGS,
    stack_size = const STACK_SIZE,
    rust_main = sym rust_main,
);

/// First Rust code to run, on the boot stack, with interrupts off.
extern "C" fn rust_main() -> ! {
    crate::app::run()
}

/// How many bytes of the stack have been used so far: the boot code zeroed
/// it, so this is the distance from the top down to the lowest byte that is
/// not zero (a used byte that happens to be zero can only make it read low
/// by the bytes below it that are zero too).
pub fn stack_used() -> usize {
    unsafe extern "C" {
        static __stack_bottom: u8;
    }
    let bottom = ptr::addr_of!(__stack_bottom);
    let mut unused = 0;
    // SAFETY: `__stack_bottom` starts the `.stack` section of `STACK_SIZE`
    // bytes (see the linker script), so every `bottom + i` with `i <
    // STACK_SIZE` is in bounds. The bytes are read as plain `u8` with a
    // volatile read: some of them are live stack of this very call chain,
    // which only ever gets read, never written, here.
    while unused < STACK_SIZE && unsafe { bottom.add(unused).read_volatile() } == 0 {
        unused += 1;
    }
    STACK_SIZE - unused
}

/// Never called; exists only so that the link succeeds (see qmp-firmware's
/// `sys.rs`: `core` is precompiled with unwind tables that name it). If
/// something did call it, the guest ends as after a panic.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() -> ! {
    crate::hw::exit(crate::app::PANIC_CODE)
}

/// Global allocator that refuses every request: the guest never allocates,
/// but `alloc` can be in its crate graph through Cargo's feature unification
/// (see qmp-firmware's `sys.rs`), and then a global allocator must exist.
struct NoAlloc;

// SAFETY: a null return from `alloc` is the documented way to report failure,
// and `dealloc` is never called because nothing is ever allocated.
unsafe impl GlobalAlloc for NoAlloc {
    unsafe fn alloc(&self, _layout: Layout) -> *mut u8 {
        ptr::null_mut()
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

/// See [`NoAlloc`].
#[global_allocator]
static ALLOCATOR: NoAlloc = NoAlloc;
