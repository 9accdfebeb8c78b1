//! Certificates made with the `openssl` command, and QEMU with a TLS monitor.
//!
//! [`Pki::create`] writes, into a directory, what QEMU's `tls-creds-x509` reads from its
//! `dir` (`ca-cert.pem`, `server-cert.pem`, `server-key.pem`) and what a client presents
//! (`client-cert.pem`, `client-key.pem`), all signed by one test CA, plus a second CA
//! (`other-ca-cert.pem`) with a client certificate of its own (`other-client-*.pem`) that
//! QEMU must refuse. Keys are ECDSA P-256. The server certificate is for `qemu.test` and
//! `127.0.0.1`.
//!
//! [`start_qemu`] starts QEMU with the harness's Unix monitor plus
//! `-object tls-creds-x509,id=tls0,dir=DIR,endpoint=server,verify-peer=on`
//! `-chardev socket,id=tlsmon,host=127.0.0.1,port=P,server=on,wait=off,tls-creds=tls0`
//! `-mon chardev=tlsmon,mode=control`.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Monitor, Qemu};

/// The DNS name in the server certificate (besides `127.0.0.1`).
pub const SERVER_NAME: &str = "qemu.test";

/// A directory of test certificates; see the module documentation.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// Makes the certificates in `dir` (created if missing) with the `openssl` command.
    pub fn create(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let pki = Pki {
            dir: dir.to_owned(),
        };
        pki.ca("ca")?;
        pki.ca("other-ca")?;
        pki.leaf(
            "server",
            "ca",
            &format!(
                "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1\n"
            ),
        )?;
        pki.leaf("client", "ca", "extendedKeyUsage=clientAuth\n")?;
        pki.leaf("other-client", "other-ca", "extendedKeyUsage=clientAuth\n")?;
        Ok(pki)
    }

    /// The directory (QEMU's `dir`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file in the directory, e.g. `ca-cert.pem`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A self-signed CA: `NAME-key.pem`, `NAME-cert.pem`.
    fn ca(&self, name: &str) -> io::Result<()> {
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}-cert.pem"),
                "-days",
                "30",
                "-subj",
                &format!("/CN=qmp-rs test {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )
    }

    /// A certificate signed by CA `ca`: `NAME-key.pem`, `NAME-cert.pem`, with `extensions`.
    fn leaf(&self, name: &str, ca: &str, extensions: &str) -> io::Result<()> {
        let csr = format!("{name}.csr");
        let ext = format!("{name}.ext");
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &csr,
                "-subj",
                &format!("/CN=qmp-rs test {name}"),
            ],
        )?;
        fs::write(
            self.dir.join(&ext),
            format!(
                "basicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\n{extensions}"
            ),
        )?;
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{ca}-cert.pem"),
                "-CAkey",
                &format!("{ca}-key.pem"),
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                &ext,
                "-out",
                &format!("{name}-cert.pem"),
            ],
        )
    }
}

fn openssl(dir: &Path, args: &[&str]) -> io::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("run openssl (Debian package openssl): {e}"),
            )
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A QEMU serving QMP over TLS on 127.0.0.1 (see the module documentation), with the
/// certificates of `pki` and `verify-peer=on`; and the TLS monitor's address.
pub fn start_qemu(pki: &Pki) -> io::Result<(Qemu, SocketAddr)> {
    let mut last = None;
    for _ in 0..5 {
        let port = crate::free_port()?;
        let creds = format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=on",
            pki.dir().display()
        );
        let chardev = format!(
            "socket,id=tlsmon,host=127.0.0.1,port={port},server=on,wait=off,tls-creds=tls0"
        );
        let started = Qemu::builder(Monitor::Unix)
            .args(["-object", &creds, "-chardev", &chardev])
            .args(["-mon", "chardev=tlsmon,mode=control"])
            .start();
        match started {
            Ok(qemu) => return Ok((qemu, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))),
            // Another program took the port in between: try another.
            Err(e) if e.to_string().contains("Address already in use") => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port")))
}
