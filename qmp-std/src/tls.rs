//! TLS monitors (feature `tls`): QMP over a QEMU `tls-creds-x509` chardev, with rustls.
//!
//! QMP has no authentication of its own; across hosts, the safe way to reach a monitor is a
//! TLS chardev with client certificates (QEMU's `verify-peer=on`). [`TlsConfig`] says whom
//! to trust (a CA file, the system's roots, or both), which certificate to present, and
//! which name the server's certificate must carry. The clients connect with
//! `connect_tls`: [`ClientBuilder::connect_tls`](crate::ClientBuilder::connect_tls),
//! [`Client::connect_tls`](crate::Client::connect_tls),
//! [`SharedClient::connect_tls`](crate::SharedClient::connect_tls) and, with the `tokio`
//! feature, `qmp_std::tokio::ClientBuilder::connect_tls`.
//!
//! Connecting does the TCP connect, the TLS handshake, and then waits for the first bytes
//! of QEMU's greeting, all within the connect timeout: under TLS 1.3 a server that refuses
//! the client's certificate says so only after the client finished its half of the
//! handshake, and this is where that answer comes. Every failure of the TLS layer there is
//! [`Error::Tls`] with a [`TlsFailure`] saying which check failed.
//!
//! The blocking clients run TLS in [`TlsStream`], a [`Stream`] (and [`SplitStream`]) over a
//! [`TcpStream`]; the tokio client runs it in a task of its own (tokio-rustls) that moves
//! bytes between the TLS connection and one end of a socket pair, so the clients
//! themselves do not know TLS is there. The embedded client (`qmp-embedded`) has no TLS.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, ClientConnection, RootCertStore};

use crate::error::{Error, Result, TlsError, TlsFailure};
use crate::shared::SplitStream;
use crate::stream::Stream;
use crate::{Client, ClientBuilder, SharedClient};
use qmp_proto::Expired;

/// How a client checks a TLS monitor and presents itself to it.
///
/// ```no_run
/// use qmp_std::tls::TlsConfig;
/// // QEMU: -object tls-creds-x509,id=tls0,dir=/etc/pki/qemu,endpoint=server,verify-peer=on
/// //       -chardev socket,id=mon,host=0.0.0.0,port=4444,server=on,wait=off,tls-creds=tls0
/// //       -mon chardev=mon,mode=control
/// let tls = TlsConfig::new()
///     .ca_file("/etc/pki/qemu/ca-cert.pem")
///     .client_auth("/etc/pki/qemu/client-cert.pem", "/etc/pki/qemu/client-key.pem")
///     .server_name("vmhost.example.com");
/// let mut qmp = qmp_std::Client::connect_tls("192.0.2.7:4444", &tls)?;
/// # Ok::<(), qmp_std::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    ca_files: Vec<PathBuf>,
    system_roots: bool,
    client_auth: Option<(PathBuf, PathBuf)>,
    server_name: Option<String>,
    rustls: Option<Arc<ClientConfig>>,
}

impl TlsConfig {
    /// Trusts nothing yet: add a CA file or the system roots.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificates in this PEM file (QEMU's `ca-cert.pem`); may be given
    /// more than once.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_files.push(path.into());
        self
    }

    /// Also trusts the system's root certificates (default `false`).
    pub fn system_roots(mut self, on: bool) -> Self {
        self.system_roots = on;
        self
    }

    /// Presents this certificate chain and private key (PEM files), as a monitor with
    /// `verify-peer=on` demands.
    pub fn client_auth(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_auth = Some((cert.into(), key.into()));
        self
    }

    /// The name the server's certificate must carry (default: the host of the address
    /// connected to, a DNS name or an IP address).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Uses this rustls configuration as it is, instead of the files above (the server name
    /// still applies).
    pub fn rustls_config(mut self, config: Arc<ClientConfig>) -> Self {
        self.rustls = Some(config);
        self
    }

    /// The rustls configuration: the files read and checked now. Fails with
    /// [`TlsFailure::Config`] saying which file is wrong.
    pub fn build(&self) -> Result<Arc<ClientConfig>> {
        if let Some(config) = &self.rustls {
            return Ok(Arc::clone(config));
        }
        let mut roots = RootCertStore::empty();
        for path in &self.ca_files {
            let certs = read_certs(path)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(config_error(path, "holds no usable CA certificate").into());
            }
        }
        if self.system_roots {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
        if roots.is_empty() {
            return Err(TlsError::new(
                TlsFailure::Config,
                "no CA to trust: give a CA file or turn on the system roots",
            )
            .into());
        }
        // ring, not aws-lc-rs (which needs cmake): rustls 0.23.48 deprecates it for lacking
        // post-quantum key exchange, which QEMU's GnuTLS does not offer either.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new(TlsFailure::Config, e.to_string()))?
            .with_root_certificates(roots);
        let config = match &self.client_auth {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certs(cert)?;
                if chain.is_empty() {
                    return Err(config_error(cert, "holds no certificate").into());
                }
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| config_error(key, format_args!("holds no private key: {e}")))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    config_error(key, format_args!("does not fit the certificate: {e}"))
                })?
            }
        };
        Ok(Arc::new(config))
    }

    /// The server name to check: the override, or the host of `addr`.
    fn name_for(&self, addr: &str) -> Result<ServerName<'static>> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => host_of(addr).to_owned(),
        };
        ServerName::try_from(name.clone()).map_err(|_| {
            TlsError::new(
                TlsFailure::Config,
                format!("{name:?} is neither a DNS name nor an IP address"),
            )
            .into()
        })
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            config_error(
                path,
                format_args!("cannot be read as PEM certificates: {e}"),
            )
            .into()
        })
}

fn config_error(path: &Path, what: impl fmt::Display) -> TlsError {
    TlsError::new(TlsFailure::Config, format!("{}: {what}", path.display()))
}

/// The host of `host:port` (`[v6]:port` too), or the whole string if it has no port.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

/// Which check failed, from rustls's error.
pub(crate) fn failure_of(e: &rustls::Error) -> TlsFailure {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                TlsFailure::UnknownCa
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsFailure::NameMismatch
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => TlsFailure::Expired,
            _ => TlsFailure::Other,
        },
        E::AlertReceived(AlertDescription::CertificateRequired) => TlsFailure::ClientCertRequired,
        E::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied,
        ) => TlsFailure::ClientCertRejected,
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => TlsFailure::NotTls,
        _ => TlsFailure::Other,
    }
}

/// The client's error for a failed TLS read, write or handshake.
fn tls_error(e: io::Error, client_cert: bool) -> Error {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(inner) => {
            let mut kind = failure_of(inner);
            // A TLS 1.2 server that wants a certificate it did not get ends the handshake
            // with a plain handshake_failure alert.
            if !client_cert
                && matches!(
                    inner,
                    rustls::Error::AlertReceived(AlertDescription::HandshakeFailure)
                )
            {
                kind = TlsFailure::ClientCertRequired;
            }
            TlsError::new(kind, inner.to_string()).into()
        }
        None => crate::connect::error(e),
    }
}

/// The rustls connection, shared by the handles of one [`TlsStream`].
type Shared = Arc<Mutex<ClientConnection>>;

/// A TLS connection over TCP as a [`Stream`] for the blocking clients, and a
/// [`SplitStream`] for [`SharedClient`]: one thread may read while others write.
///
/// Reads block on the TCP socket without holding the TLS state, so a writer never waits
/// for a reader; its read and write timeouts are the socket's.
pub struct TlsStream {
    tcp: TcpStream,
    conn: Shared,
    /// Where the bytes written so far end (shared by every handle that writes).
    written: Arc<Mutex<Boundary>>,
    /// Encrypted bytes read from the socket, before rustls takes them.
    raw: Vec<u8>,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

/// The size of one read from the socket: a whole TLS record and its header.
const RAW_CHUNK: usize = 18 << 10;

impl TlsStream {
    /// Connects to `addr` (`host:port`), does the TLS handshake and waits for the server's
    /// first bytes, all within `timeout` (`None`: as long as it takes).
    pub fn connect(addr: &str, tls: &TlsConfig, timeout: Option<Duration>) -> Result<Self> {
        let config = tls.build()?;
        let name = tls.name_for(addr)?;
        let start = Instant::now();
        let client_cert = config.client_auth_cert_resolver.has_certs();
        let addrs = addr.to_socket_addrs().map_err(Error::Io)?;
        let tcp = crate::connect::connect_tcp(addrs.collect::<Vec<_>>().as_slice(), timeout)
            .map_err(crate::connect::error)?;
        tcp.set_nodelay(true)?;
        let conn = ClientConnection::new(config, name)
            .map_err(|e| TlsError::new(TlsFailure::Config, e.to_string()))?;
        let mut stream = TlsStream {
            tcp,
            conn: Arc::new(Mutex::new(conn)),
            written: Arc::default(),
            raw: vec![0; RAW_CHUNK],
        };
        let deadline = timeout.map(|t| start + t);
        stream.establish(deadline).map_err(|e| match e {
            Establish::Io(e) if !stream.lock().is_handshaking() && ends_link(&e) => {
                refused(client_cert)
            }
            Establish::Io(e) => tls_error(e, client_cert),
            Establish::NotTls => TlsError::new(
                TlsFailure::NotTls,
                "the server answered in plain text: the monitor has no TLS",
            )
            .into(),
            Establish::TimedOut(which) => Error::Timeout(which),
        })?;
        let _ = stream.tcp.set_read_timeout(None);
        let _ = stream.tcp.set_write_timeout(None);
        Ok(stream)
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    fn lock(&self) -> MutexGuard<'_, ClientConnection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handshake, then the first plaintext bytes (kept for the client), by `deadline`.
    fn establish(&mut self, deadline: Option<Instant>) -> Result<(), Establish> {
        let mut first = true;
        // When to nudge QEMU next (see NUDGE), once the handshake is done on this side.
        let mut nudge: Option<(Instant, Duration)> = None;
        loop {
            {
                let mut conn = self.lock();
                let now = Instant::now();
                match nudge {
                    _ if conn.is_handshaking() => {}
                    Some((at, _)) if at > now => {}
                    _ => {
                        conn.writer().write_all(NUDGE)?;
                        let every = nudge.map_or(FIRST_NUDGE, |(_, d)| (d * 2).min(MAX_NUDGE));
                        nudge = Some((now + every, every));
                    }
                }
                flush(&mut conn, &self.tcp)?;
                let state = conn.process_new_packets().map_err(invalid_data)?;
                if !conn.is_handshaking() && state.plaintext_bytes_to_read() > 0 {
                    return Ok(());
                }
                if state.peer_has_closed() {
                    return Err(Establish::Io(io::ErrorKind::UnexpectedEof.into()));
                }
            }
            let handshaking = self.lock().is_handshaking();
            let which = if handshaking {
                Expired::Connect
            } else {
                Expired::Greeting
            };
            let now = Instant::now();
            let left = deadline.map(|d| d.saturating_duration_since(now));
            if left.is_some_and(|left| left.is_zero()) {
                return Err(Establish::TimedOut(which));
            }
            let until_nudge = nudge.map(|(at, _)| at.saturating_duration_since(now));
            let wait = match (left, until_nudge) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.tcp
                .set_read_timeout(wait.map(|w| w.max(Duration::from_millis(1))))?;
            self.tcp.set_write_timeout(left)?;
            let n = match (&self.tcp).read(&mut self.raw) {
                Ok(n) => n,
                Err(e) if is_timeout(&e) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Establish::Io(e)),
            };
            // A TLS record starts with a content type from 20 to 24; QEMU's plain monitor
            // starts with `{`.
            if first && n > 0 && !(20..=24).contains(&self.raw[0]) {
                return Err(Establish::NotTls);
            }
            first = false;
            let mut conn = self.lock();
            feed(&mut conn, &self.raw[..n])?;
            if n == 0 {
                conn.process_new_packets().map_err(invalid_data)?;
                return Err(Establish::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

/// The byte the client sends, in a TLS record of its own, after the handshake and after
/// every complete message. QEMU 7.2's TLS channel acts on a record from the client only
/// once another record has come after it (seen on the real binary, TLS 1.3 and 1.2:
/// without it, the greeting never comes and every reply lags one command behind). A
/// newline between JSON values is whitespace, which QMP skips, so the record that waits
/// is always this one. After the handshake it is sent at once, then again after
/// [`FIRST_NUDGE`], twice that, and so on up to every [`MAX_NUDGE`], until the greeting
/// comes.
const NUDGE: &[u8] = b"\n";
const FIRST_NUDGE: Duration = Duration::from_millis(5);
const MAX_NUDGE: Duration = Duration::from_millis(200);

/// Whether `e` means the peer ended the connection.
fn ends_link(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// The error for a server that hung up right after the handshake, before greeting: QEMU
/// with `verify-peer=on` does that, without an alert, to a client whose certificate it
/// refuses or that sent none.
fn refused(client_cert: bool) -> Error {
    let (failure, detail) = if client_cert {
        (
            TlsFailure::ClientCertRejected,
            "the server hung up after the handshake: it refused the client certificate",
        )
    } else {
        (
            TlsFailure::ClientCertRequired,
            "the server hung up after the handshake: it wants a client certificate",
        )
    };
    TlsError::new(failure, detail).into()
}

/// Where the bytes written so far end in the JSON text: whether a message is complete, so
/// that a [`NUDGE`] can follow it without landing inside a value.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Boundary {
    depth: u32,
    in_string: bool,
    escaped: bool,
}

impl Boundary {
    /// Follows `bytes`; returns whether they end between messages (and some did end).
    pub(crate) fn follow(&mut self, bytes: &[u8]) -> bool {
        let mut ended = false;
        for &b in bytes {
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    ended |= self.depth == 0;
                }
                // The resync byte after a cut-off message: QEMU's parser starts over.
                0x01 => *self = Boundary::default(),
                _ => {}
            }
        }
        ended && self.depth == 0 && !self.in_string
    }
}

/// Why [`TlsStream::establish`] failed.
enum Establish {
    Io(io::Error),
    NotTls,
    TimedOut(Expired),
}

impl From<io::Error> for Establish {
    fn from(e: io::Error) -> Self {
        Establish::Io(e)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Gives rustls every byte of `bytes` (`&[]`: the end of the stream) and processes them.
fn feed(conn: &mut ClientConnection, mut bytes: &[u8]) -> io::Result<()> {
    loop {
        let taken = conn.read_tls(&mut bytes)?;
        conn.process_new_packets().map_err(invalid_data)?;
        if bytes.is_empty() || taken == 0 {
            return Ok(());
        }
    }
}

/// Writes out every encrypted byte rustls has queued.
fn flush(conn: &mut ClientConnection, mut tcp: &TcpStream) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(&mut tcp)?;
    }
    Ok(())
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut conn = self.lock();
                // What a write could not send yet goes first: the peer waits for it.
                flush(&mut conn, &self.tcp)?;
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // The peer went without close_notify (QEMU killed): the end, as over TCP.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
            }
            let n = (&self.tcp).read(&mut self.raw)?;
            let mut conn = self.lock();
            feed(&mut conn, &self.raw[..n])?;
            flush(&mut conn, &self.tcp)?;
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut conn = self.lock();
        flush(&mut conn, &self.tcp)?;
        let n = conn.writer().write(bytes)?;
        let ended = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .follow(&bytes[..n]);
        if ended {
            conn.writer().write_all(NUDGE)?;
        }
        // Taken: if the socket is full now, the rest goes before the next read or write.
        match flush(&mut conn, &self.tcp) {
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => Ok(n),
            other => other.map(|()| n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut conn = self.lock();
        flush(&mut conn, &self.tcp)
    }
}

impl Stream for TlsStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.tcp.set_read_timeout(timeout).map(|()| true)
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.tcp.set_write_timeout(timeout).map(|()| true)
    }
}

impl SplitStream for TlsStream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(TlsStream {
            tcp: self.tcp.try_clone()?,
            conn: Arc::clone(&self.conn),
            written: Arc::clone(&self.written),
            raw: vec![0; RAW_CHUNK],
        })
    }

    fn shutdown(&self) -> io::Result<()> {
        // A close_notify if the TLS state is free now; the socket goes down regardless.
        if let Ok(mut conn) = self.conn.try_lock() {
            conn.send_close_notify();
            let _ = self.tcp.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = flush(&mut conn, &self.tcp);
        }
        self.tcp.shutdown(Shutdown::Both)
    }
}

impl ClientBuilder {
    /// Connects to a TLS monitor at `addr` (`"host:port"`), checked and presented to as
    /// `tls` says, and does the handshake; TCP connect, TLS handshake and QMP greeting
    /// together within the connect timeout. TLS failures are [`Error::Tls`].
    pub fn connect_tls(self, addr: &str, tls: &TlsConfig) -> Result<Client<TlsStream>> {
        let start = Instant::now();
        let stream = TlsStream::connect(addr, tls, self.options.connect_timeout)?;
        self.handshake_from(stream, start)
    }
}

impl Client<TlsStream> {
    /// Connects to a TLS monitor with default [`Options`](crate::Options); see
    /// [`ClientBuilder::connect_tls`].
    pub fn connect_tls(addr: &str, tls: &TlsConfig) -> Result<Self> {
        ClientBuilder::new().connect_tls(addr, tls)
    }
}

impl SharedClient {
    /// Connects to a TLS monitor with default options; see
    /// [`ClientBuilder::connect_tls`] (and [`SharedClient::from_client`] for others).
    pub fn connect_tls(addr: &str, tls: &TlsConfig) -> Result<Self> {
        ClientBuilder::new().connect_tls(addr, tls)?.into_shared()
    }
}

#[cfg(feature = "tokio")]
mod tokio_tls {
    use std::sync::atomic::{AtomicBool, Ordering};

    use ::tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    use ::tokio::net::{TcpStream, UnixStream};

    use super::*;

    impl crate::tokio::ClientBuilder {
        /// Connects to a TLS monitor at `addr` (`"host:port"`), checked and presented to
        /// as `tls` says, and does the handshake; all within the connect timeout. TLS runs
        /// in a task of its own (spawned on the current runtime) that moves bytes between
        /// the TLS connection and the client. TLS failures are [`Error::Tls`].
        pub async fn connect_tls(
            mut self,
            addr: &str,
            tls: &TlsConfig,
        ) -> Result<crate::tokio::Client> {
            let config = tls.build()?;
            let name = tls.name_for(addr)?;
            let start = Instant::now();
            let timeout = self.options.connect_timeout;
            let handshaken = AtomicBool::new(false);
            let establish = establish(addr, config, name, &handshaken);
            let link = match timeout {
                Some(t) => ::tokio::time::timeout(t, establish).await.map_err(|_| {
                    Error::Timeout(if handshaken.load(Ordering::Relaxed) {
                        Expired::Greeting
                    } else {
                        Expired::Connect
                    })
                })??,
                None => establish.await?,
            };
            // The QMP handshake gets what is left of the connect timeout.
            self.options.connect_timeout = timeout.map(|t| {
                t.saturating_sub(start.elapsed())
                    .max(Duration::from_millis(1))
            });
            self.handshake_unix(link).await
        }
    }

    /// The TCP connect, the TLS handshake and the greeting's first bytes; then the task
    /// that carries the bytes, and the client's end of its socket pair.
    async fn establish(
        addr: &str,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        handshaken: &AtomicBool,
    ) -> Result<UnixStream> {
        let client_cert = config.client_auth_cert_resolver.has_certs();
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| tls_error(e, client_cert))?;
        handshaken.store(true, Ordering::Relaxed);
        let mut tls = ::tokio::io::BufReader::new(tls);
        let hung_up = |e: io::Error| {
            if ends_link(&e) {
                refused(client_cert)
            } else {
                tls_error(e, client_cert)
            }
        };
        let mut every = FIRST_NUDGE;
        loop {
            let nudge = async {
                tls.write_all(NUDGE).await?;
                tls.flush().await
            };
            nudge.await.map_err(hung_up)?;
            match ::tokio::time::timeout(every, tls.fill_buf()).await {
                Err(_) => every = (every * 2).min(MAX_NUDGE),
                Ok(Ok([])) => return Err(refused(client_cert)),
                Ok(Ok(_)) => break,
                Ok(Err(e)) => return Err(hung_up(e)),
            }
        }
        let (ours, theirs) = UnixStream::pair()?;
        ::tokio::spawn(carry(tls, theirs));
        Ok(ours)
    }

    /// Moves bytes between the TLS connection and the client's socket pair until either
    /// side ends, with a [`NUDGE`] record after every complete message to QEMU.
    async fn carry<T>(tls: T, pair: UnixStream)
    where
        T: ::tokio::io::AsyncRead + ::tokio::io::AsyncWrite + Unpin,
    {
        use ::tokio::io::AsyncReadExt;
        let (mut tls_read, mut tls_write) = ::tokio::io::split(tls);
        let (mut pair_read, mut pair_write) = pair.into_split();
        let down = async {
            let _ = ::tokio::io::copy(&mut tls_read, &mut pair_write).await;
            let _ = pair_write.shutdown().await;
        };
        let up = async {
            let mut boundary = Boundary::default();
            let mut buf = vec![0u8; 16 << 10];
            loop {
                let n = match pair_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let bytes = &buf[..n];
                let sent = async {
                    tls_write.write_all(bytes).await?;
                    if boundary.follow(bytes) {
                        tls_write.write_all(NUDGE).await?;
                    }
                    tls_write.flush().await
                };
                if sent.await.is_err() {
                    break;
                }
            }
            let _ = tls_write.shutdown().await;
        };
        // Either side ending ends both: the client sees the end when QEMU goes.
        ::tokio::select! {
            () = down => {}
            () = up => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failed_check_has_its_failure() {
        use rustls::Error as E;
        let cert = |c| failure_of(&E::InvalidCertificate(c));
        assert_eq!(cert(CertificateError::UnknownIssuer), TlsFailure::UnknownCa);
        assert_eq!(
            cert(CertificateError::NotValidForName),
            TlsFailure::NameMismatch
        );
        assert_eq!(cert(CertificateError::Expired), TlsFailure::Expired);
        assert_eq!(cert(CertificateError::NotValidYet), TlsFailure::Expired);
        assert_eq!(cert(CertificateError::Revoked), TlsFailure::Other);
        let alert = |a| failure_of(&E::AlertReceived(a));
        assert_eq!(
            alert(AlertDescription::CertificateRequired),
            TlsFailure::ClientCertRequired
        );
        assert_eq!(
            alert(AlertDescription::UnknownCA),
            TlsFailure::ClientCertRejected
        );
        assert_eq!(
            failure_of(&E::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            )),
            TlsFailure::NotTls
        );
        // A TLS 1.2 server's answer to a missing certificate.
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            E::AlertReceived(AlertDescription::HandshakeFailure),
        );
        assert_eq!(
            tls_error(e, false).tls_failure(),
            Some(TlsFailure::ClientCertRequired)
        );
        assert_eq!(
            refused(true).tls_failure(),
            Some(TlsFailure::ClientCertRejected)
        );
        assert_eq!(
            refused(false).tls_failure(),
            Some(TlsFailure::ClientCertRequired)
        );
    }

    #[test]
    fn the_server_name_is_the_host() {
        assert_eq!(host_of("qemu.example:4444"), "qemu.example");
        assert_eq!(host_of("127.0.0.1:4444"), "127.0.0.1");
        assert_eq!(host_of("[::1]:4444"), "::1");
        assert_eq!(host_of("qemu.example"), "qemu.example");
        let tls = TlsConfig::new();
        assert!(tls.name_for("127.0.0.1:1").is_ok());
        let bad = TlsConfig::new().server_name("not a name");
        assert_eq!(
            bad.name_for("127.0.0.1:1").unwrap_err().tls_failure(),
            Some(TlsFailure::Config)
        );
    }

    #[test]
    fn messages_end_where_json_values_end() {
        let mut b = Boundary::default();
        assert!(b.follow(br#"{"execute": "stop"}"#));
        // Split inside a string, with brackets and an escaped quote in it.
        assert!(!b.follow(br#"{"execute": "x", "id": "a}\"]"#));
        assert!(!b.follow(br#"{b"#));
        assert!(b.follow(br#"c"}"#));
        // Two messages at once, the second cut off.
        assert!(!b.follow(br#"{"a": [1, {"b": 2}]}{"c": "#));
        // The resync byte starts over.
        assert!(b.follow(b"\x01{\"execute\": \"cont\"}"));
    }
}
