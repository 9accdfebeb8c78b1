//! The TLS options both programs take, parsed in one place.
//!
//! `--tls-ca FILE`, `--tls-cert FILE`, `--tls-key FILE` and `--tls-name NAME` (each also as
//! `--tls-ca=FILE`), or an address of the form `tls:HOST:PORT`, turn TLS on: see
//! [`TlsArgs::take`] and [`TlsArgs::apply`]. The programs call [`TlsArgs::take`] on their
//! argument list first and parse what is left as before.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::Address;

/// The usage lines for the TLS options, for a program's `--help`.
pub const TLS_USAGE: &str = "\
TLS (a QEMU monitor with -object tls-creds-x509,...; ADDRESS tls:HOST:PORT, or
HOST:PORT with any of these options):
  --tls-ca FILE     trust the CA certificates in FILE (PEM; default: the
                    system's roots)
  --tls-cert FILE   present this client certificate (QEMU's verify-peer=on)
  --tls-key FILE    the client certificate's private key (PEM)
  --tls-name NAME   the name the server's certificate must carry (default:
                    the HOST of the address)
";

/// The TLS settings of a monitor address: where to find the CA, the client certificate and
/// key, and the name to check. Empty: the system's roots, no client certificate, the
/// address's host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsArgs {
    /// `--tls-ca FILE`.
    pub ca: Option<PathBuf>,
    /// `--tls-cert FILE`.
    pub cert: Option<PathBuf>,
    /// `--tls-key FILE`.
    pub key: Option<PathBuf>,
    /// `--tls-name NAME`.
    pub name: Option<String>,
}

impl TlsArgs {
    /// Takes the `--tls-*` options (and their values) out of `args`: returns the TLS
    /// settings and the other arguments in their order. Arguments after `--` stay as
    /// they are.
    ///
    /// ```
    /// use qmp_examples::TlsArgs;
    /// let (tls, rest) = TlsArgs::take(["-p", "--tls-ca", "ca.pem", "--tls-name=vm1", "h:1"].map(Into::into))?;
    /// assert_eq!(tls.ca.as_deref(), Some("ca.pem".as_ref()));
    /// assert_eq!(tls.name.as_deref(), Some("vm1"));
    /// assert_eq!(rest, ["-p", "h:1"].map(std::ffi::OsString::from));
    /// # Ok::<(), String>(())
    /// ```
    pub fn take(
        args: impl IntoIterator<Item = OsString>,
    ) -> Result<(TlsArgs, Vec<OsString>), String> {
        let mut tls = TlsArgs::default();
        let mut rest = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let Some(text) = arg.to_str().filter(|t| t.starts_with("--tls-")) else {
                let done = arg == "--";
                rest.push(arg);
                if done {
                    rest.extend(args.by_ref());
                }
                continue;
            };
            let (option, inline) = match text.split_once('=') {
                Some((option, value)) => (option.to_owned(), Some(value.to_owned())),
                None => (text.to_owned(), None),
            };
            let value = match inline {
                Some(value) => value,
                None => args
                    .next()
                    .and_then(|v| v.into_string().ok())
                    .ok_or_else(|| format!("{option} needs a value"))?,
            };
            if value.is_empty() {
                return Err(format!("{option} needs a value"));
            }
            let slot = match option.as_str() {
                "--tls-ca" => &mut tls.ca,
                "--tls-cert" => &mut tls.cert,
                "--tls-key" => &mut tls.key,
                "--tls-name" => {
                    tls.name = Some(value);
                    continue;
                }
                _ => return Err(format!("unknown option {option}")),
            };
            *slot = Some(value.into());
        }
        Ok((tls, rest))
    }

    /// Whether no TLS option was given.
    pub fn is_empty(&self) -> bool {
        *self == TlsArgs::default()
    }

    /// The address the program connects to: a TCP address becomes a TLS one when TLS
    /// options were given, a `tls:` address gets them. Fails for TLS options without an
    /// address or with a Unix socket, and for a certificate without its key (or the
    /// reverse).
    pub fn apply(self, address: Option<Address>) -> Result<Option<Address>, String> {
        if self.cert.is_some() != self.key.is_some() {
            return Err("--tls-cert and --tls-key go together".into());
        }
        if self.is_empty() {
            return Ok(address);
        }
        match address {
            None => Err("the --tls-* options need an ADDRESS (HOST:PORT)".into()),
            Some(Address::Unix(path)) => Err(format!(
                "TLS needs a TCP address (HOST:PORT), not the Unix socket {}",
                path.display()
            )),
            Some(Address::Tcp { host, port }) => Ok(Some(Address::Tls {
                host,
                port,
                tls: self,
            })),
            Some(Address::Tls { host, port, tls }) => Ok(Some(Address::Tls {
                host,
                port,
                tls: TlsArgs {
                    ca: self.ca.or(tls.ca),
                    cert: self.cert.or(tls.cert),
                    key: self.key.or(tls.key),
                    name: self.name.or(tls.name),
                },
            })),
        }
    }

    /// The client's TLS configuration: the CA file, else the system's roots.
    pub fn config(&self) -> qmp_std::tls::TlsConfig {
        let mut config = qmp_std::tls::TlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_file(ca),
            None => config.system_roots(true),
        };
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            config = config.client_auth(cert, key);
        }
        if let Some(name) = &self.name {
            config = config.server_name(name);
        }
        config
    }
}

/// Parses a program's command line with the TLS options: takes them out
/// ([`TlsArgs::take`]), parses the rest with `parse` (`Ok(None)` for `--help`), and applies
/// them to the address that `address` points at ([`TlsArgs::apply`]).
pub fn parse_with_tls<T>(
    args: impl IntoIterator<Item = OsString>,
    parse: impl FnOnce(Vec<OsString>) -> Result<Option<T>, String>,
    address: impl FnOnce(&mut T) -> &mut Option<Address>,
) -> Result<Option<T>, String> {
    let (tls, rest) = TlsArgs::take(args)?;
    let Some(mut parsed) = parse(rest)? else {
        return Ok(None);
    };
    let slot = address(&mut parsed);
    *slot = tls.apply(slot.take())?;
    Ok(Some(parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(args: &[&str]) -> Result<(TlsArgs, Vec<OsString>), String> {
        TlsArgs::take(args.iter().map(OsString::from))
    }

    #[test]
    fn usage_fits_a_terminal() {
        for line in TLS_USAGE.lines() {
            assert!(line.chars().count() <= 80, "{line}");
        }
    }

    #[test]
    fn options_are_taken_out() {
        let (tls, rest) = take(&[
            "--tls-ca",
            "ca.pem",
            "-v",
            "--tls-cert=c.pem",
            "--tls-key",
            "k.pem",
            "h:1",
        ])
        .unwrap();
        assert_eq!(tls.ca, Some("ca.pem".into()));
        assert_eq!(tls.cert, Some("c.pem".into()));
        assert_eq!(tls.key, Some("k.pem".into()));
        assert_eq!(rest, ["-v", "h:1"].map(OsString::from));
        // After `--`, nothing is an option.
        let (tls, rest) = take(&["--", "--tls-ca"]).unwrap();
        assert!(tls.is_empty());
        assert_eq!(rest, ["--", "--tls-ca"].map(OsString::from));
        assert!(take(&["--tls-ca"]).is_err());
        assert!(take(&["--tls-ca="]).is_err());
        assert!(take(&["--tls-bogus", "x"]).is_err());
    }

    #[test]
    fn options_turn_tls_on() {
        let tcp = Address::parse("h:1").unwrap();
        let tls = TlsArgs {
            ca: Some("ca.pem".into()),
            ..TlsArgs::default()
        };
        let applied = tls.clone().apply(Some(tcp.clone())).unwrap().unwrap();
        assert_eq!(applied.to_string(), "tls:h:1");
        assert!(matches!(&applied, Address::Tls { tls: t, .. } if *t == tls));
        // No options: the address as it was.
        assert_eq!(
            TlsArgs::default().apply(Some(tcp.clone())).unwrap(),
            Some(tcp)
        );
        // A tls: address gets the options.
        let address = Address::parse("tls:h:1").unwrap();
        let Some(Address::Tls { tls: t, .. }) = tls.clone().apply(Some(address)).unwrap() else {
            panic!("not TLS");
        };
        assert_eq!(t.ca, Some("ca.pem".into()));
        assert!(tls.clone().apply(None).is_err());
        assert!(tls.apply(Some(Address::parse("/q.sock").unwrap())).is_err());
        let half = TlsArgs {
            cert: Some("c.pem".into()),
            ..TlsArgs::default()
        };
        assert!(half.apply(Some(Address::parse("h:1").unwrap())).is_err());
    }
}
