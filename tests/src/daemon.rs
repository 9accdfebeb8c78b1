//! A helper program the tests start (the guest agent, the storage daemon): in a temporary
//! directory of its own, waited for until its socket accepts connections, killed, reaped and
//! cleaned up on drop.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a helper may take to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running helper program.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    dir: PathBuf,
    name: &'static str,
}

impl Daemon {
    /// A fresh temporary directory `PREFIX-PID-TAG` for a helper.
    pub fn temp_dir(prefix: &str, tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary directory");
        dir
    }

    /// Starts `command` (its standard streams closed) to run in `dir`, which it owns from
    /// now on; `name` and `package` say what is missing when it cannot start.
    pub fn spawn(mut command: Command, dir: PathBuf, name: &'static str, package: &str) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {name}: {e} (Debian package {package}; scripts/ensure-qemu.sh)")
            });
        Self { child, dir, name }
    }

    /// Waits until `socket` accepts a connection (a probe: QEMU's programs serve one client
    /// at a time and take the next once it has gone); fails the test if the helper exits or
    /// takes too long.
    pub fn wait_for_socket(&mut self, socket: &Path) {
        let started = Instant::now();
        while UnixStream::connect(socket).is_err() {
            assert!(
                self.child.try_wait().expect("wait").is_none(),
                "{} exited during start-up",
                self.name
            );
            assert!(
                started.elapsed() < START_TIMEOUT,
                "{} opened no socket at {}",
                self.name,
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits up to `timeout` for it to exit; whether it did.
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

    /// Its temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
