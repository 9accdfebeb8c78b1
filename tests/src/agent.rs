//! A real QEMU guest agent (`qemu-ga`, Debian package qemu-guest-agent) on the host, for the
//! guest agent tests: started in a temporary directory, killed and cleaned up on drop.
//!
//! The agent runs on the host, so every command that would change the host is blocked with
//! `-b` ([`BLOCKED`]): the agent answers those with an error.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::daemon::Daemon;

/// The commands the test agents refuse: shutdown, suspend, setting the clock, freezing the
/// file systems, users' passwords, CPUs and memory.
pub const BLOCKED: &str = "guest-shutdown,guest-suspend-disk,guest-suspend-ram,guest-suspend-hybrid,guest-set-time,guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,guest-set-user-password,guest-set-vcpus,guest-set-memory-blocks";

/// The agent's program: `/usr/sbin/qemu-ga`, or `qemu-ga` on the `PATH`.
pub fn program() -> &'static str {
    if Path::new("/usr/sbin/qemu-ga").exists() {
        "/usr/sbin/qemu-ga"
    } else {
        "qemu-ga"
    }
}

/// A running `qemu-ga`.
#[derive(Debug)]
pub struct QemuGa {
    daemon: Daemon,
    path: PathBuf,
}

impl QemuGa {
    /// A fresh temporary directory for an agent (with its `state` directory).
    pub fn temp_dir(tag: &str) -> PathBuf {
        let dir = Daemon::temp_dir("qga", tag);
        std::fs::create_dir_all(dir.join("state")).expect("temporary directory");
        dir
    }

    /// `qemu-ga -m METHOD -p PATH` with its state in `dir` (from [`QemuGa::temp_dir`]).
    pub fn spawn(dir: PathBuf, method: &str, path: &Path) -> Self {
        let mut command = Command::new(program());
        command
            .args(["-m", method, "-p"])
            .arg(path)
            .arg("-t")
            .arg(dir.join("state"))
            .arg("-f")
            .arg(dir.join("pid"))
            .args(["-b", BLOCKED]);
        Self {
            daemon: Daemon::spawn(command, dir, "qemu-ga", "qemu-guest-agent"),
            path: path.to_owned(),
        }
    }

    /// `qemu-ga -m unix-listen` on `DIR/qga.sock`, once the socket accepts connections.
    pub fn unix(tag: &str) -> Self {
        let dir = Self::temp_dir(tag);
        let socket = dir.join("qga.sock");
        let mut agent = Self::spawn(dir, "unix-listen", &socket);
        agent.daemon.wait_for_socket(&socket);
        agent
    }

    /// The socket or device path it was given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its temporary directory.
    pub fn dir(&self) -> &Path {
        self.daemon.dir()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }
}
