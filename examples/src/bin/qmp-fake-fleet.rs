//! qmp-fake-fleet: one process serving N simulated QEMU monitors on Unix sockets.
//!
//! Each monitor is qmp-proto's sans-IO [`Server`] (QEMU 7.2's greeting, negotiation rules
//! and byte-exact answers) on a listening Unix socket `DIR/vmI.sock`, serving one client at
//! a time, driven by one tokio task per monitor on a current-thread runtime. A monitor answers `query-status`
//! (running or paused, as QEMU does), `stop` and `cont` (sending `STOP` / `RESUME` before
//! the reply, as QEMU does, with the wall-clock timestamp of the moment it is written), and
//! `CommandNotFound` for anything else. It stands in for QEMU when a fleet is larger than
//! the machine can run: `bash bench/fleet.sh` with `SIMULATED=1` drives 10,000 of them with
//! `qmp-fleet --connect DIR` and with the same program on Python's `qemu.qmp`.
//!
//! ```text
//! qmp-fake-fleet --dir DIR [--vms N]
//! ```
//!
//! It prints `ready N` on stdout once every socket listens, and serves until it is killed;
//! it raises its open-file limit to the hard limit first.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use qmp_std::qmp_proto::{self, Incoming, RawJson, Server, encode_event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// The receive buffer of each monitor: QMP commands in this benchmark are small.
const RX: usize = 4096;

fn usage() -> ExitCode {
    eprintln!("usage: qmp-fake-fleet --dir DIR [--vms N]");
    ExitCode::from(2)
}

/// The wall clock as QEMU stamps its events: seconds and microseconds.
fn timestamp() -> (i64, i64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs() as i64, i64::from(now.subsec_micros()))
}

/// Appends what `encode` writes (into a scratch buffer of `scratch` bytes) to `out`.
fn put(
    out: &mut Vec<u8>,
    scratch: &mut [u8],
    encode: impl FnOnce(&mut [u8]) -> Result<usize, qmp_proto::EncodeError>,
) -> io::Result<()> {
    let n = encode(scratch).map_err(|e| io::Error::other(format!("encoding: {e:?}")))?;
    out.extend_from_slice(&scratch[..n]);
    Ok(())
}

/// Serves one connection until the client leaves.
async fn serve(mut stream: UnixStream) -> io::Result<()> {
    let mut server = Server::new(vec![0u8; RX], (7, 2, 0), "qmp-fake-fleet", false);
    let mut scratch = [0u8; 512];
    let mut out = Vec::with_capacity(256);
    let mut running = true;
    put(&mut out, &mut scratch, |b| server.greeting(b))?;
    stream.write_all(&out).await?;
    loop {
        let room = server.read_buf();
        if room.is_empty() {
            return Err(io::Error::other("receive buffer full"));
        }
        let n = stream.read(room).await?;
        if n == 0 {
            return Ok(());
        }
        server.commit(n);
        out.clear();
        while let Some(incoming) = server.poll() {
            match incoming {
                Incoming::Answer(answer) => put(&mut out, &mut scratch, |b| answer.encode(b))?,
                Incoming::Request(req) => {
                    let event = if req.name == "stop" {
                        running = false;
                        Some("STOP")
                    } else if req.name == "cont" {
                        running = true;
                        Some("RESUME")
                    } else {
                        None
                    };
                    if let Some(name) = event {
                        put(&mut out, &mut scratch, |b| {
                            encode_event(name, None, timestamp(), b)
                        })?;
                    }
                    if req.name == "query-status" {
                        let value = if running {
                            r#"{"status": "running", "singlestep": false, "running": true}"#
                        } else {
                            r#"{"status": "paused", "singlestep": false, "running": false}"#
                        };
                        let value = RawJson::parse(value).map_err(io::Error::other)?;
                        put(&mut out, &mut scratch, |b| req.reply(value, b))?;
                    } else if event.is_some() {
                        let value = RawJson::parse("{}").map_err(io::Error::other)?;
                        put(&mut out, &mut scratch, |b| req.reply(value, b))?;
                    } else {
                        put(&mut out, &mut scratch, |b| req.not_found(b))?;
                    }
                }
            }
        }
        stream.write_all(&out).await?;
    }
}

/// Binds a listening socket at `path` (replacing a stale one).
fn bind(path: &Path) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// One monitor: serves one client at a time, forever. While a client is connected the
/// listening socket is closed (so 10,000 connected monitors take 10,000 descriptors, not
/// 20,000, within the usual hard limit of this machine); a second client meanwhile is
/// refused, where QEMU would leave it waiting in the backlog.
async fn monitor(path: PathBuf, mut listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                drop(listener);
                // A client that leaves mid-message is its own business.
                let _ = serve(stream).await;
            }
            Err(e) => {
                eprintln!("qmp-fake-fleet: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        }
        listener = loop {
            match bind(&path) {
                Ok(listener) => break listener,
                Err(e) => {
                    eprintln!("qmp-fake-fleet: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        };
    }
}

async fn run(dir: &Path, vms: usize) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..vms {
        let path = dir.join(format!("vm{i}.sock"));
        let listener = bind(&path)?;
        tokio::task::spawn_local(monitor(path, listener));
    }
    println!("ready {vms}");
    std::future::pending::<()>().await;
    Ok(())
}

fn main() -> ExitCode {
    let mut dir: Option<PathBuf> = None;
    let mut vms = 10_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => match args.next() {
                Some(d) => dir = Some(d.into()),
                None => return usage(),
            },
            "--vms" | "-n" => match args.next().and_then(|v| v.parse().ok()) {
                Some(n) => vms = n,
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    let Some(dir) = dir else { return usage() };
    qmp_examples::raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("qmp-fake-fleet: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, run(&dir, vms)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qmp-fake-fleet: {e}");
            ExitCode::FAILURE
        }
    }
}
