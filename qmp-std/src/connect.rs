//! Connecting within the connect timeout.
//!
//! A blocking `connect(2)` to a Unix socket whose accept queue is full waits until the
//! listener accepts, which may be never: QEMU listens on its monitor socket with a backlog of
//! 1 and accepts no second client while one is connected, so once the queue holds the
//! connections it will not accept, every later `UnixStream::connect` blocks forever. Here the
//! socket is non-blocking instead: on Linux a full queue then fails at once with `EAGAIN`
//! (and `poll` does not say when room appears), so the connect is retried with a short
//! backoff until the deadline.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::error::Error;
use qmp_proto::Expired;

/// The first wait before connecting again to a full accept queue; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// The client's error for a failed connect: [`Error::Timeout`] when the connect timeout ran
/// out, [`Error::Io`] otherwise.
pub(crate) fn error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::TimedOut {
        Error::Timeout(Expired::Connect)
    } else {
        Error::Io(e)
    }
}

/// Connects to the Unix socket at `path` within `timeout` (`None`: as long as it takes).
/// Returns a blocking stream; when the time runs out, an error of kind
/// [`io::ErrorKind::TimedOut`].
pub(crate) fn connect_unix(path: &Path, timeout: Option<Duration>) -> io::Result<UnixStream> {
    let Some(timeout) = timeout else {
        return UnixStream::connect(path);
    };
    let deadline = Instant::now() + timeout;
    let addr = SocketAddrUnix::new(path)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let mut backoff = FIRST_BACKOFF;
    loop {
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => break,
            Err(Errno::INTR) => {}
            // The accept queue is full.
            Err(Errno::AGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(timed_out(format!(
                        "timed out connecting to {}: the monitor's accept queue is full \
                         — another client may hold the monitor",
                        path.display()
                    )));
                }
                std::thread::sleep(backoff.min(left));
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(Errno::INPROGRESS) => {
                finish_connect(&fd, deadline, path)?;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Waits for a connect in progress to complete, until `deadline`.
fn finish_connect(fd: &OwnedFd, deadline: Instant, path: &Path) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(format!(
                "timed out connecting to {}",
                path.display()
            )));
        }
        let left = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(fd, PollFlags::OUT)];
        match rustix::event::poll(&mut fds, Some(&left)) {
            Ok(0) | Err(Errno::INTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(e.into()),
        }
    }
    match rustix::net::sockopt::socket_error(fd.as_fd())? {
        Ok(()) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Connects to the first address of `addr` that answers, within `timeout` for all of them
/// together (`None`: as long as each takes). The error is the last address's, or one of kind
/// [`io::ErrorKind::TimedOut`] when the time ran out before the next address.
pub(crate) fn connect_tcp(
    addr: impl ToSocketAddrs,
    timeout: Option<Duration>,
) -> io::Result<TcpStream> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut last = None;
    for addr in addr.to_socket_addrs()? {
        match connect_one_tcp(&addr, deadline) {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                let out_of_time = e.kind() == io::ErrorKind::TimedOut;
                last = Some(e);
                if out_of_time {
                    break;
                }
            }
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to")))
}

fn connect_one_tcp(addr: &SocketAddr, deadline: Option<Instant>) -> io::Result<TcpStream> {
    let Some(deadline) = deadline else {
        return TcpStream::connect(addr);
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        // `TcpStream::connect_timeout` refuses a zero timeout (InvalidInput).
        return Err(timed_out(format!("timed out connecting to {addr}")));
    }
    TcpStream::connect_timeout(addr, left)
}

fn timed_out(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, message)
}

/// The async client's Unix connect: tokio's `UnixStream::connect` fails at once with
/// `WouldBlock` when the accept queue is full, so it is retried with a short backoff. The
/// caller bounds it with the connect timeout.
#[cfg(feature = "tokio")]
pub(crate) async fn connect_unix_tokio(path: &Path) -> io::Result<::tokio::net::UnixStream> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match ::tokio::net::UnixStream::connect(path).await {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ::tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::mpsc;

    use super::*;
    use crate::ClientBuilder;

    const TIMEOUT: Duration = Duration::from_millis(300);

    /// A listening socket that never accepts, its accept queue full, and the connections
    /// that fill it (kept open so they stay queued).
    struct FullListener {
        dir: PathBuf,
        path: PathBuf,
        _listener: OwnedFd,
        _queued: Vec<OwnedFd>,
    }

    impl FullListener {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("qmp-std-connect-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("full.sock");
            let addr = SocketAddrUnix::new(&path).unwrap();
            let listener = rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )
            .unwrap();
            rustix::net::bind(&listener, &addr).unwrap();
            rustix::net::listen(&listener, 0).unwrap();
            let mut queued = Vec::new();
            loop {
                assert!(queued.len() < 64, "the accept queue never filled");
                let fd = rustix::net::socket_with(
                    AddressFamily::UNIX,
                    SocketType::STREAM,
                    SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                    None,
                )
                .unwrap();
                match rustix::net::connect(&fd, &addr) {
                    Ok(()) => queued.push(fd),
                    Err(Errno::AGAIN) => break,
                    Err(e) => panic!("filling the accept queue: {e}"),
                }
            }
            Self {
                dir,
                path,
                _listener: listener,
                _queued: queued,
            }
        }
    }

    impl Drop for FullListener {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Runs `f` on a thread and fails the test if it has not finished within 20 s (a connect
    /// that ignores its timeout would block forever).
    fn within_20s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("the connect ignored its timeout (still blocked after 20 s)")
    }

    /// A connect that gave up at its timeout, and not much later.
    fn assert_timed_out(result: Result<(), Error>, elapsed: Duration) {
        eprintln!("{result:?} after {elapsed:?}");
        assert!(
            matches!(result, Err(Error::Timeout(_))),
            "expected Error::Timeout, got {result:?}"
        );
        assert!(elapsed >= TIMEOUT, "gave up early: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    }

    #[test]
    fn connect_unix_times_out_on_a_full_accept_queue() {
        let listener = FullListener::new("blocking");
        let path = listener.path.clone();
        let (result, elapsed) = within_20s(move || {
            let start = Instant::now();
            let result = ClientBuilder::new()
                .connect_timeout(Some(TIMEOUT))
                .connect_unix(&path);
            (result.map(drop), start.elapsed())
        });
        assert_timed_out(result, elapsed);
    }

    #[test]
    fn connect_unix_says_why_it_timed_out() {
        let listener = FullListener::new("message");
        let e = connect_unix(&listener.path, Some(Duration::from_millis(20))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("accept queue is full"), "{e}");
    }

    #[test]
    fn connect_unix_connects_when_there_is_room() {
        let dir = std::env::temp_dir().join(format!("qmp-std-connect-{}-room", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("room.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let stream = connect_unix(&path, Some(TIMEOUT)).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        // Blocking again, as callers expect.
        stream
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let e = io::Read::read(&mut &stream, &mut [0; 1]).unwrap_err();
        assert!(matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn connect_tcp_gives_up_when_the_time_is_gone() {
        let e = connect_tcp("127.0.0.1:1", Some(Duration::ZERO)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn tokio_connect_unix_times_out_on_a_full_accept_queue() {
        let listener = FullListener::new("tokio");
        let path = listener.path.clone();
        let (result, elapsed) = within_20s(move || {
            let runtime = ::tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let start = Instant::now();
                let result = crate::tokio::ClientBuilder::new()
                    .connect_timeout(Some(TIMEOUT))
                    .connect_unix(&path)
                    .await;
                (result.map(drop), start.elapsed())
            })
        });
        assert_timed_out(result, elapsed);
    }
}
