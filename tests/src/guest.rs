//! A real Linux guest: Debian's kernel, busybox and the host's `qemu-ga` in an initramfs that
//! this module builds itself, booted under TCG with a QMP monitor, the guest agent's
//! virtio-serial port, a serial console captured to a file, `pvpanic`, a balloon and
//! hot-pluggable PCI.
//!
//! # The image
//!
//! On first use [`image`] fetches two Debian packages with the package manager into a cache
//! that survives between runs ([`cache_dir`]): the kernel package that `linux-image-amd64`
//! depends on (`apt-get download`, then only `vmlinuz` and a few modules are unpacked from it
//! with `dpkg-deb --fsys-tarfile | tar`), and `busybox-static`. `apt-get update` runs only if a
//! download fails. Each test process then writes the initramfs itself (a `newc` cpio, written
//! here, uncompressed, in well under a second):
//!
//! - `/init`: busybox `sh` running [`INIT_SCRIPT`]: it mounts `/proc`, `/sys` and `devtmpfs`,
//!   loads the modules with `insmod` in dependency order (read from each module's
//!   `depends=`; the package ships no `modules.dep`), links `/dev/virtio-ports/NAME` from
//!   sysfs, starts `qemu-ga` on `/dev/virtio-ports/org.qemu.guest_agent.0` (restarting it
//!   whenever it exits), powers off (`poweroff -f`) when the ACPI power button sends an input
//!   event, prints [`READY_MARKER`] and keeps a root shell on the serial console;
//! - `/bin/busybox` and its applets, the modules in `/lib/modules`, and `/usr/sbin/qemu-ga`
//!   with the shared libraries `ldd` names, at the same paths as on the host.
//!
//! # Booting
//!
//! [`Guest::boot`] starts it as the crate's [`Qemu`] with a [`Monitor::Unix`] monitor and
//!
//! ```text
//! -machine pc,accel=tcg -m 256 -kernel VMLINUX -initrd INITRD
//! -append "console=ttyS0 panic=-1 quiet"
//! -chardev socket,id=con0,path=DIR/console.sock,server=on,wait=off,logfile=DIR/console.log
//! -serial chardev:con0
//! -device virtio-serial -chardev socket,id=qga0,path=DIR/qga.sock,server=on,wait=off
//! -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0
//! -device pvpanic -device virtio-balloon-pci,id=balloon0
//! -blockdev driver=null-co,node-name=null0,size=67108864 -device virtio-blk-pci,drive=null0,id=vda
//! ```
//!
//! started paused (`-S`), resumed with `cont` over the monitor once QEMU has settled, and
//! handed out when the init has printed [`READY_MARKER`] on the console (the log file is
//! polled: no fixed sleep). The `pc` machine's root PCI bus is hot-pluggable through ACPI.
//! TCG, not KVM: a guest under `/dev/kvm` stalled in the kernel's decompressor on the machine
//! this was written on. `VMLINUX` is the uncompressed kernel, unpacked once from `vmlinuz`
//! and started through its PVH entry (see [`Image::kernel`]), which skips the decompressor.
//! At most [`MAX_BOOTING`] guests boot at a time in one process.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::{Monitor, Qemu};

/// The line the guest's init prints on the console once the modules are loaded, the agent is
/// started and the power button is watched.
pub const READY_MARKER: &str = "QMP-GUEST-READY";

/// The name of the guest agent's virtio-serial port (what `qemu-ga` looks for by default).
pub const AGENT_PORT: &str = "org.qemu.guest_agent.0";

/// The id of the chardev behind the agent's port (a Unix socket server at boot).
pub const AGENT_CHARDEV: &str = "qga0";

/// The serial console's socket, its log file and the agent's socket, in QEMU's directory.
const CONSOLE_SOCKET: &str = "console.sock";
const CONSOLE_LOG: &str = "console.log";
const AGENT_SOCKET: &str = "qga.sock";

/// The Debian package whose dependency names the current kernel package.
pub const KERNEL_META_PACKAGE: &str = "linux-image-amd64";

/// The Debian package with a statically linked busybox.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The Debian package with `qemu-ga`, installed with `apt-get` when it is missing.
pub const AGENT_PACKAGE: &str = "qemu-guest-agent";

/// Where `qemu-ga` is on the host (and in the guest).
pub const AGENT_PROGRAM: &str = "/usr/sbin/qemu-ga";

/// How many guests of one test process may be booting at the same time.
pub const MAX_BOOTING: usize = 2;

/// How long [`Guest::boot`] waits for [`READY_MARKER`] unless [`GuestBuilder::timeout`] says
/// otherwise.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// The modules the init loads (their dependencies come first, found from `depends=`):
/// virtio over PCI, the console (virtio-serial), the balloon, the NIC, the disk, the ACPI
/// power button with `evdev` (its `/dev/input/eventN`) and pvpanic (its ISA device is an ACPI `QEMU0001`, driven by `pvpanic-mmio`).
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "virtio_balloon",
    "virtio_net",
    "virtio_blk",
    "button",
    "evdev",
    "pvpanic_mmio",
];

/// The `/etc/os-release` of the guest, which `guest-get-osinfo` reports.
pub const OS_RELEASE: &str = "ID=qmp-rs-guest\nNAME=\"qmp-rs test guest\"\nPRETTY_NAME=\"qmp-rs test guest (busybox)\"\nVERSION_ID=1\n";

/// The guest's `/sbin/shutdown`, which `qemu-ga` runs for `guest-shutdown` (busybox has no
/// `shutdown`): it powers off at once, whatever the mode.
pub const SHUTDOWN_SCRIPT: &str =
    "#!/bin/sh\necho \"guest: shutdown $*\" >/dev/console\nexec poweroff -f\n";

/// The guest's `/init` (run by busybox `sh`); `@MODULES@` is replaced by the module names in
/// load order.
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/virtio-ports /run /var/run /tmp
for m in @MODULES@; do
    insmod /lib/modules/$m.ko || echo "guest: insmod $m failed"
done
# Power off on any input event from the ACPI power button.
for e in /sys/class/input/event*; do
    if [ "$(cat $e/device/name)" = "Power Button" ]; then
        (dd if=/dev/input/${e##*/} of=/dev/null bs=24 count=1 2>/dev/null &&
         echo "guest: power button, powering off" && poweroff -f) &
    fi
done
# An event that comes before a watcher has opened its device is lost: wait for the open.
i=0
while [ $i -lt 100 ] && ! ls -l /proc/[0-9]*/fd/ 2>/dev/null | grep -q /dev/input/event; do
    sleep 0.05
    i=$((i+1))
done
# udev's /dev/virtio-ports/NAME links, from sysfs; the ports appear asynchronously.
i=0
while [ $i -lt 200 ]; do
    for p in /sys/class/virtio-ports/*; do
        [ -e $p/name ] && [ -e /dev/${p##*/} ] && ln -sf /dev/${p##*/} /dev/virtio-ports/$(cat $p/name)
    done
    [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ] && break
    sleep 0.05
    i=$((i+1))
done
(while :; do
    qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run
    echo "guest: qemu-ga exited ($?)"
    sleep 0.2
done) </dev/null >/dev/console 2>&1 &
echo "guest: up $(cut -d' ' -f1 /proc/uptime) s"
echo QMP-GUEST-READY
# A root shell on the console, with it as its controlling tty (Ctrl-C works).
while :; do
    setsid cttyhack sh
done
"#;

/// The directory that holds the downloaded and unpacked packages between runs:
/// `$QMP_GUEST_CACHE` if set, else `guest-cache` in `$CARGO_TARGET_DIR` (at run time, else at
/// build time), else in the workspace's `target/`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("QMP_GUEST_CACHE") {
        return dir.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("guest-cache")
}

/// The kernel and initramfs a [`Guest`] boots.
#[derive(Debug, Clone)]
pub struct Image {
    /// The kernel: `vmlinux` unpacked from the Debian package's `vmlinuz` when it can be
    /// booted through its PVH entry, else `vmlinuz`.
    pub kernel: PathBuf,
    /// The initramfs this process wrote (an uncompressed `newc` cpio).
    pub initrd: PathBuf,
    /// The unpacked modules (`NAME.ko`, names with `_`).
    pub modules: PathBuf,
    /// The modules the init loads, in load order (see [`module_order`]).
    pub module_order: Vec<String>,
    /// The kernel's release, such as `6.1.0-57-amd64` (what `uname -r` says in the guest).
    pub release: String,
    /// How long fetching (if needed) and building took in this process.
    pub build_time: Duration,
}

/// The image, fetched and built on first use in this process (see the module documentation).
pub fn image() -> io::Result<&'static Image> {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| build_image(&cache_dir()).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| io::Error::other(format!("cannot make the guest image: {e}")))
}

fn build_image(cache: &Path) -> io::Result<Image> {
    let started = Instant::now();
    fs::create_dir_all(cache)?;
    let kernel_dir = fetch_kernel(cache)?;
    let busybox = fetch_busybox(cache)?;
    let release = fs::read_to_string(kernel_dir.join("release"))?
        .trim()
        .to_owned();
    let initrd = cache.join("initramfs.cpio");
    let modules = kernel_dir.join("modules");
    let module_order = module_order(&modules)?;
    let cpio = initramfs(&modules, &module_order, &busybox)?;
    write_atomic(&initrd, &cpio)?;
    Ok(Image {
        kernel: pvh_kernel(&kernel_dir),
        modules,
        module_order,
        initrd,
        release,
        build_time: started.elapsed(),
    })
}

/// `cache/kernel` with `vmlinuz`, `release` and `modules/NAME.ko`; fetched if absent.
fn fetch_kernel(cache: &Path) -> io::Result<PathBuf> {
    let dir = cache.join("kernel");
    let complete = |dir: &Path| {
        dir.join("release").is_file()
            && MODULES
                .iter()
                .all(|m| dir.join("modules").join(format!("{m}.ko")).is_file())
    };
    if complete(&dir) {
        return Ok(dir);
    }
    // Unpacked before MODULES grew: unpack again.
    let _ = fs::remove_dir_all(&dir);
    let package = kernel_package()?;
    let work = scratch_dir(cache)?;
    let deb = apt_download(&package, &work.0)?;
    let unpacked = work.0.join("root");
    fs::create_dir_all(&unpacked)?;
    // Only the kernel and the modules that may be needed: the whole package is ~400 MB.
    let mut tar = Command::new("sh");
    tar.arg("-c")
        .arg(
            "dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" --wildcards \
             './boot/vmlinuz-*' '*/virtio*.ko*' '*/button.ko*' '*failover.ko*' '*/pvpanic*.ko*' \
             '*/evdev.ko*'",
        )
        .arg("sh")
        .arg(&deb)
        .arg(&unpacked);
    run(&mut tar)?;
    let out = work.0.join("kernel");
    let modules = out.join("modules");
    fs::create_dir_all(&modules)?;
    let mut release = None;
    for entry in fs::read_dir(unpacked.join("boot"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(r) = name.strip_prefix("vmlinuz-") {
            fs::rename(entry.path(), out.join("vmlinuz"))?;
            release = Some(r.to_owned());
        }
    }
    let release = release.ok_or_else(|| io::Error::other(format!("no vmlinuz in {package}")))?;
    // ./lib/modules in bookworm, ./usr/lib/modules where /lib is merged into /usr.
    for path in find_files(&unpacked)? {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let (stem, xz) = match name.strip_suffix(".ko.xz") {
            Some(stem) => (stem.to_owned(), true),
            None => match name.strip_suffix(".ko") {
                Some(stem) => (stem.to_owned(), false),
                None => continue,
            },
        };
        let target = modules.join(format!("{}.ko", stem.replace('-', "_")));
        if xz {
            let output = run(Command::new("xz").arg("-dc").arg(&path))?;
            fs::write(target, output)?;
        } else {
            fs::rename(&path, target)?;
        }
    }
    fs::write(out.join("release"), format!("{release}\n"))?;
    publish(&out, &dir)?;
    Ok(dir)
}

/// The kernel to boot: `vmlinux`, the uncompressed ELF inside `vmlinuz`, when it has a PVH
/// entry note (QEMU then starts it directly: under TCG that saves the ~10 s the bzImage's own
/// decompressor takes); else `vmlinuz`. Unpacked once into the cache (`xz -dc` from the xz
/// magic on; Debian's kernels are xz-compressed).
fn pvh_kernel(kernel_dir: &Path) -> PathBuf {
    let vmlinux = kernel_dir.join("vmlinux");
    let vmlinuz = kernel_dir.join("vmlinuz");
    if vmlinux.is_file() {
        return vmlinux;
    }
    let unpacked = (|| -> io::Result<Vec<u8>> {
        let image = fs::read(&vmlinuz)?;
        const XZ: &[u8] = b"\xfd7zXZ\0";
        let at = image
            .windows(XZ.len())
            .position(|w| w == XZ)
            .ok_or_else(|| io::Error::other("not xz-compressed"))?;
        let elf = run(Command::new("sh")
            .arg("-c")
            .arg("tail -c +$(($2 + 1)) \"$1\" | xz -dc --single-stream")
            .arg("sh")
            .arg(&vmlinuz)
            .arg(at.to_string()))?;
        if elf.starts_with(b"\x7fELF") && has_pvh_note(&elf) {
            Ok(elf)
        } else {
            Err(io::Error::other("no ELF with a PVH note"))
        }
    })();
    match unpacked.and_then(|elf| write_atomic(&vmlinux, &elf)) {
        Ok(()) => vmlinux,
        Err(_) => vmlinuz,
    }
}

/// Whether an ELF kernel has the `Xen` note of type 18 (`XEN_ELFNOTE_PHYS32_ENTRY`), the PVH
/// entry point QEMU boots an ELF `-kernel` through: a note header (name size 4, description
/// size, type 18) followed by the name `Xen\0`.
fn has_pvh_note(elf: &[u8]) -> bool {
    elf.windows(16).any(|w| {
        w[12..] == *b"Xen\0" && w[..4] == 4u32.to_le_bytes() && w[8..12] == 18u32.to_le_bytes()
    })
}

/// `cache/busybox/busybox`; fetched if absent.
fn fetch_busybox(cache: &Path) -> io::Result<PathBuf> {
    let dir = cache.join("busybox");
    let binary = dir.join("busybox");
    if binary.is_file() {
        return Ok(binary);
    }
    let work = scratch_dir(cache)?;
    let deb = apt_download(BUSYBOX_PACKAGE, &work.0)?;
    let unpacked = work.0.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let out = work.0.join("busybox");
    fs::create_dir_all(&out)?;
    fs::rename(unpacked.join("bin/busybox"), out.join("busybox"))?;
    publish(&out, &dir)?;
    Ok(binary)
}

/// The kernel package `linux-image-amd64` depends on, from `apt-cache depends`.
fn kernel_package() -> io::Result<String> {
    // Without package lists apt-cache fails ("No packages found"): update, then ask again.
    let find = || -> io::Result<Option<String>> {
        let output = run(Command::new("apt-cache")
            .arg("depends")
            .arg(KERNEL_META_PACKAGE))?;
        Ok(String::from_utf8_lossy(&output).lines().find_map(|line| {
            let dep = line.trim().strip_prefix("Depends: ")?;
            dep.starts_with("linux-image-").then(|| dep.to_owned())
        }))
    };
    if let Ok(Some(package)) = find() {
        return Ok(package);
    }
    apt_update()?;
    find()?.ok_or_else(|| {
        io::Error::other(format!(
            "apt-cache depends {KERNEL_META_PACKAGE} names no linux-image package"
        ))
    })
}

/// `apt-get download PACKAGE` into `dir` (after `apt-get update` if the first try fails);
/// returns the `.deb`.
fn apt_download(package: &str, dir: &Path) -> io::Result<PathBuf> {
    let download = || {
        run(Command::new("apt-get")
            .arg("download")
            .arg(package)
            .current_dir(dir))
    };
    if download().is_err() {
        apt_update()?;
        download()?;
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            return Ok(path);
        }
    }
    Err(io::Error::other(format!(
        "apt-get download {package} left no .deb"
    )))
}

fn apt_update() -> io::Result<()> {
    run(Command::new("apt-get").arg("update").arg("-qq")).map(drop)
}

/// Runs a command to completion; its standard output, or an error with its standard error.
fn run(command: &mut Command) -> io::Result<Vec<u8>> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {command:?}: {e}")))?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(output.stdout)
}

/// A fresh directory in the cache for one download, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir(cache: &Path) -> io::Result<Scratch> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let scratch = cache.join(format!("tmp-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    // apt-get download drops privileges to `_apt` when it can write the directory.
    fs::set_permissions(&scratch, fs::Permissions::from_mode(0o777))?;
    Ok(Scratch(scratch))
}

/// Moves a finished directory into place; if another process got there first, theirs stays.
fn publish(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(_) if to.is_dir() => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot move {} to {}: {e}", from.display(), to.display()),
        )),
    }
}

/// Writes a file through a temporary name and a rename, so that a QEMU reading the old one
/// (in another process) never sees a half-written file.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// Every regular file below `dir`.
fn find_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    Ok(files)
}

/// The `depends=` of a kernel module, from its `.modinfo` strings (names with `_`).
fn module_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// [`MODULES`] and their dependencies, each after what it depends on.
pub fn module_order(modules_dir: &Path) -> io::Result<Vec<String>> {
    fn visit(
        name: &str,
        dir: &Path,
        done: &mut Vec<String>,
        visiting: &mut Vec<String>,
    ) -> io::Result<()> {
        if done.iter().any(|d| d == name) {
            return Ok(());
        }
        if visiting.iter().any(|v| v == name) {
            return Err(io::Error::other(format!(
                "module dependency cycle at {name}"
            )));
        }
        let path = dir.join(format!("{name}.ko"));
        let ko = fs::read(&path).map_err(|e| {
            io::Error::new(e.kind(), format!("module {name} ({}): {e}", path.display()))
        })?;
        visiting.push(name.to_owned());
        for dep in module_depends(&ko) {
            visit(&dep, dir, done, visiting)?;
        }
        visiting.pop();
        done.push(name.to_owned());
        Ok(())
    }
    let mut done = Vec::new();
    for name in MODULES {
        visit(name, modules_dir, &mut done, &mut Vec::new())?;
    }
    Ok(done)
}

/// The shared libraries `ldd` names for a program (absolute paths, the loader included).
fn shared_libraries(program: &Path) -> io::Result<Vec<PathBuf>> {
    let output = run(Command::new("ldd").arg(program))?;
    Ok(String::from_utf8_lossy(&output)
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
            let path = match line.split_once("=> ") {
                Some((_, rest)) => rest,
                None => line.trim(),
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// The host's `qemu-ga`, installed with `apt-get install qemu-guest-agent` if missing.
fn agent_program() -> io::Result<PathBuf> {
    let program = PathBuf::from(AGENT_PROGRAM);
    if !program.is_file() {
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", AGENT_PACKAGE])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(program)
}

/// The initramfs: see the module documentation.
fn initramfs(modules_dir: &Path, order: &[String], busybox: &Path) -> io::Result<Vec<u8>> {
    let mut cpio = Cpio::default();
    for dir in [
        "/bin", "/dev", "/proc", "/sys", "/run", "/tmp", "/etc", "/root",
    ] {
        cpio.dir(dir);
    }
    cpio.node("/dev/console", 0o020600, (5, 1));
    cpio.file("/bin/busybox", 0o755, &fs::read(busybox)?);
    cpio.symlink("/bin/sh", "busybox");
    let script = INIT_SCRIPT.replace("@MODULES@", &order.join(" "));
    cpio.file("/init", 0o755, script.as_bytes());
    cpio.file("/etc/os-release", 0o644, OS_RELEASE.as_bytes());
    cpio.file("/sbin/shutdown", 0o755, SHUTDOWN_SCRIPT.as_bytes());
    for name in order {
        let ko = fs::read(modules_dir.join(format!("{name}.ko")))?;
        cpio.file(&format!("/lib/modules/{name}.ko"), 0o644, &ko);
    }
    let agent = agent_program()?;
    cpio.file(AGENT_PROGRAM, 0o755, &fs::read(&agent)?);
    for lib in shared_libraries(&agent)? {
        let bytes = fs::read(&lib)?;
        cpio.file(&lib.to_string_lossy(), 0o755, &bytes);
    }
    Ok(cpio.finish())
}

/// A `newc` cpio archive being written (parent directories are added as needed).
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: Vec<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let name = name.trim_start_matches('/');
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            prefix.push('/');
            prefix.push_str(part);
            if !self.dirs.contains(&prefix) {
                self.dirs.push(prefix.clone());
                let p = prefix.clone();
                self.entry(&p, 0o040755, (0, 0), &[]);
            }
        }
    }

    fn dir(&mut self, path: &str) {
        self.parents(path);
        if !self.dirs.iter().any(|d| d == path) {
            self.dirs.push(path.to_owned());
            self.entry(path, 0o040755, (0, 0), &[]);
        }
    }

    fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.parents(path);
        self.entry(path, 0o100000 | perm, (0, 0), data);
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entry(path, 0o120777, (0, 0), target.as_bytes());
    }

    fn node(&mut self, path: &str, mode: u32, rdev: (u32, u32)) {
        self.parents(path);
        self.entry(path, mode, rdev, &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// Counts the guests booting in this process (see [`MAX_BOOTING`]).
static BOOTING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// One of [`MAX_BOOTING`] boot slots, given back on drop.
struct BootSlot;

impl BootSlot {
    fn take() -> BootSlot {
        let (count, freed) = &BOOTING;
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        while *n >= MAX_BOOTING {
            n = freed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        BootSlot
    }
}

impl Drop for BootSlot {
    fn drop(&mut self) {
        let (count, freed) = &BOOTING;
        *count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        freed.notify_one();
    }
}

/// Options for booting a [`Guest`]; made by [`Guest::builder`].
#[derive(Debug, Clone)]
pub struct GuestBuilder {
    memory_mib: u32,
    cpus: u32,
    args: Vec<OsString>,
    timeout: Duration,
}

impl GuestBuilder {
    /// The guest's memory in MiB (`-m`; default 256).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// The number of vCPUs (`-smp`; default 1).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Adds one QEMU argument after the guest's own.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// How long to wait for the guest to be ready (default [`BOOT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the image if needed, starts QEMU and waits for the guest (see the module
    /// documentation).
    pub fn boot(self) -> io::Result<Guest> {
        let image = image()?;
        let slot = BootSlot::take();
        let mut args: Vec<OsString> = vec![
            "-machine".into(),
            "pc,accel=tcg".into(),
            "-m".into(),
            self.memory_mib.to_string().into(),
            "-smp".into(),
            self.cpus.to_string().into(),
            "-kernel".into(),
            image.kernel.clone().into(),
            "-initrd".into(),
            image.initrd.clone().into(),
            "-append".into(),
            "console=ttyS0 panic=-1 quiet".into(),
            "-chardev".into(),
            format!(
                "socket,id=con0,path={CONSOLE_SOCKET},server=on,wait=off,logfile={CONSOLE_LOG}"
            )
            .into(),
            "-serial".into(),
            "chardev:con0".into(),
            "-device".into(),
            "virtio-serial".into(),
            "-chardev".into(),
            format!("socket,id={AGENT_CHARDEV},path={AGENT_SOCKET},server=on,wait=off").into(),
            "-device".into(),
            format!("virtserialport,chardev={AGENT_CHARDEV},name={AGENT_PORT}").into(),
            "-device".into(),
            "pvpanic".into(),
            "-device".into(),
            "virtio-balloon-pci,id=balloon0".into(),
            "-blockdev".into(),
            "driver=null-co,node-name=null0,size=67108864".into(),
            "-device".into(),
            "virtio-blk-pci,drive=null0,id=vda".into(),
        ];
        args.extend(self.args);
        // The sockets and the log are relative: QEMU runs in its own temporary directory.
        let qemu = Qemu::builder(Monitor::Unix)
            .paused(true)
            .args(args)
            .start()?;
        let dir = qemu.dir().to_owned();
        let started = Instant::now();
        // The console stays connected: QEMU drops input it has not yet handed to the UART
        // when a client goes away. What it sends back is in the log file; a thread drains it.
        let console = UnixStream::connect(dir.join(CONSOLE_SOCKET))?;
        let mut drain = console.try_clone()?;
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while matches!(drain.read(&mut buf), Ok(n) if n > 0) {}
        });
        let mut guest = Guest {
            qemu,
            console,
            console_log: dir.join(CONSOLE_LOG),
            agent_sock: dir.join(AGENT_SOCKET),
            boot_time: Duration::ZERO,
        };
        guest.cont()?;
        guest.wait_console(READY_MARKER, self.timeout)?;
        guest.boot_time = started.elapsed();
        drop(slot);
        Ok(guest)
    }
}

/// A running Linux guest in a throwaway QEMU (killed and cleaned up on drop).
#[derive(Debug)]
pub struct Guest {
    qemu: Qemu,
    console: UnixStream,
    console_log: PathBuf,
    agent_sock: PathBuf,
    boot_time: Duration,
}

impl Guest {
    /// Boots a guest with the default options; see [`GuestBuilder::boot`].
    pub fn boot() -> io::Result<Guest> {
        Guest::builder().boot()
    }

    /// Options for booting a guest.
    pub fn builder() -> GuestBuilder {
        GuestBuilder {
            memory_mib: 256,
            cpus: 1,
            args: Vec::new(),
            timeout: BOOT_TIMEOUT,
        }
    }

    /// The QEMU that runs the guest (its monitor is a Unix socket: [`Guest::qmp_path`]).
    pub fn qemu(&self) -> &Qemu {
        &self.qemu
    }

    /// The QEMU that runs the guest, mutably (to wait for its exit, or kill it).
    pub fn qemu_mut(&mut self) -> &mut Qemu {
        &mut self.qemu
    }

    /// The QMP monitor's Unix socket.
    pub fn qmp_path(&self) -> &Path {
        match self.qemu.address() {
            crate::Address::Unix(path) => path,
            _ => Path::new(""),
        }
    }

    /// The host end of the guest agent's virtio-serial port: a Unix socket (QEMU is the
    /// server; one client at a time) on which `qemu-ga` inside the guest answers.
    pub fn agent_path(&self) -> &Path {
        &self.agent_sock
    }

    /// The file the serial console is logged to.
    pub fn console_log_path(&self) -> &Path {
        &self.console_log
    }

    /// Everything the guest wrote on its serial console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.console_log).unwrap_or_default()).into_owned()
    }

    /// How long the guest took from `cont` to [`READY_MARKER`].
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Types a command line into the root shell on the serial console (it runs as root; its
    /// output lands in [`Guest::console`]).
    pub fn shell(&self, command_line: &str) -> io::Result<()> {
        let mut line = command_line.as_bytes().to_vec();
        line.push(b'\n');
        (&self.console).write_all(&line)
    }

    /// Runs a command line in the root shell on the serial console and waits (up to
    /// `timeout`) until it has finished; returns what the console showed meanwhile (the
    /// echoed command line, then its output).
    ///
    /// The end is found by a marker the shell prints after the command: `echo @@N@@` is
    /// typed as `echo @@$((N))@@`, so the echo of the typed line does not match.
    pub fn run(&mut self, command_line: &str, timeout: Duration) -> io::Result<String> {
        static TOKEN: AtomicU64 = AtomicU64::new(1);
        let token = TOKEN.fetch_add(1, Ordering::Relaxed) + 1000;
        let from = self.console_bytes().len();
        self.shell(&format!("{command_line}; echo @@$(({token}))@@"))?;
        let end = self.wait_console_from(from, &format!("@@{token}@@"), timeout)?;
        let console = self.console_bytes();
        Ok(String::from_utf8_lossy(&console[from..end]).into_owned())
    }

    /// Waits until `needle` appears on the console (the log file is polled every 20 ms).
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> io::Result<()> {
        self.wait_console_from(0, needle, timeout).map(drop)
    }

    fn console_bytes(&self) -> Vec<u8> {
        fs::read(&self.console_log).unwrap_or_default()
    }

    /// Waits until `needle` appears on the console after byte `from`; returns where it starts.
    fn wait_console_from(
        &mut self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> io::Result<usize> {
        let deadline = Instant::now() + timeout;
        let needle = needle.as_bytes();
        loop {
            let console = self.console_bytes();
            if let Some(at) = console
                .get(from..)
                .and_then(|rest| rest.windows(needle.len()).position(|w| w == needle))
            {
                return Ok(from + at);
            }
            let gone = !self.qemu.is_running();
            if gone || Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{:?} did not appear on the guest's console ({}); console:\n{}\n\
                         QEMU's output:\n{}",
                        String::from_utf8_lossy(needle),
                        if gone { "QEMU exited" } else { "timed out" },
                        self.console(),
                        self.qemu.output()
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `qmp_capabilities` and `cont` over a plain connection to the monitor, which is then
    /// closed (QEMU serves one client at a time: the tests' clients come after).
    fn cont(&mut self) -> io::Result<()> {
        let mut stream = UnixStream::connect(self.qmp_path())?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"cont\"}\n")?;
        // The greeting, then two returns (events may come in between).
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        let returns = |text: &[u8]| {
            text.split(|&b| b == b'\n')
                .filter(|line| line.starts_with(b"{\"return\""))
                .count()
        };
        while returns(&text) < 2 {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Err(io::Error::other(format!(
                    "QEMU closed the monitor before cont returned: {}",
                    String::from_utf8_lossy(&text)
                )));
            }
            text.extend_from_slice(&buf[..n]);
            if text.windows(8).any(|w| w == b"\"error\":") {
                return Err(io::Error::other(format!(
                    "cont failed: {}",
                    String::from_utf8_lossy(&text)
                )));
            }
        }
        Ok(())
    }
}
