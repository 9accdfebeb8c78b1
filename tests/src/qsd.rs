//! A real `qemu-storage-daemon` (QSD, shipped with QEMU) with a QMP monitor on a Unix socket,
//! for the storage daemon tests: started in a temporary directory, killed and cleaned up on
//! drop.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `qemu-storage-daemon --chardev socket,path=DIR/qsd.sock,server=on,wait=off,id=m
/// --monitor chardev=m` with the given block nodes.
#[derive(Debug)]
pub struct Qsd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Qsd {
    /// Starts it with `--blockdev` options `blockdevs` (e.g. `null-co,node-name=src,size=1M`)
    /// and waits until the monitor accepts connections.
    pub fn start(tag: &str, blockdevs: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("qsd-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary directory");
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
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon (Debian package qemu-system-common)");
        let started = Instant::now();
        // A probe connection: QEMU serves one monitor client at a time and takes the next
        // once it has gone.
        while UnixStream::connect(&socket).is_err() {
            assert!(
                child.try_wait().expect("wait").is_none(),
                "qemu-storage-daemon exited"
            );
            assert!(started.elapsed() < Duration::from_secs(20), "no socket");
            std::thread::sleep(Duration::from_millis(5));
        }
        Self { child, dir, socket }
    }

    /// The monitor socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits up to `timeout` for it to exit (after `quit`); whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.child.try_wait().expect("wait").is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
