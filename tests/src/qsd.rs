//! A real `qemu-storage-daemon` (QSD, shipped with QEMU) with a QMP monitor on a Unix socket,
//! for the storage daemon tests: started in a temporary directory, killed and cleaned up on
//! drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::daemon::Daemon;

/// A running `qemu-storage-daemon --chardev socket,path=DIR/qsd.sock,server=on,wait=off,id=m
/// --monitor chardev=m` with the given block nodes.
#[derive(Debug)]
pub struct Qsd {
    daemon: Daemon,
    socket: PathBuf,
}

impl Qsd {
    /// Starts it with `--blockdev` options `blockdevs` (e.g. `null-co,node-name=src,size=1M`)
    /// and waits until the monitor accepts connections.
    pub fn start(tag: &str, blockdevs: &[&str]) -> Self {
        let dir = Daemon::temp_dir("qsd", tag);
        let socket = dir.join("qsd.sock");
        let mut command = Command::new("qemu-storage-daemon");
        command
            .arg("--chardev")
            .arg(format!(
                "socket,path={},server=on,wait=off,id=m",
                socket.display()
            ))
            .args(["--monitor", "chardev=m"]);
        for blockdev in blockdevs {
            command.args(["--blockdev", blockdev]);
        }
        let mut daemon = Daemon::spawn(command, dir, "qemu-storage-daemon", "qemu-system-common");
        daemon.wait_for_socket(&socket);
        Self { daemon, socket }
    }

    /// The monitor socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its temporary directory.
    pub fn dir(&self) -> &Path {
        self.daemon.dir()
    }

    /// Waits up to `timeout` for it to exit (after `quit`); whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        self.daemon.wait_exit(timeout)
    }
}
