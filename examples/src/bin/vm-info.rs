//! `vm-info`: what a running QEMU is, in one screen: version, run state, name, KVM, CPUs and
//! block devices, through typed QMP commands.
//!
//! Run `vm-info --help` for the usage. Without an address it asks a throwaway
//! `qemu-system-x86_64 -machine none` (which has no CPUs and no disks).

use std::process::ExitCode;

use qmp_examples::{
    Address, Connection, TLS_USAGE, Table, ThrowawayQemu, connect, describe_error, exit_on_signal,
    parse_with_tls, print_error, print_out, wait_if_exiting,
};
use qmp_std::commands::{
    BlockInfo, CpuInfoFast, QueryBlock, QueryCpusFast, QueryKvm, QueryName, QueryStatus,
    QueryVersion,
};
use qmp_std::qapi::{QueryRxFilter, RxFilterInfo};
use qmp_std::serde::de::DeserializeOwned;
use qmp_std::{Client, Command, Error, Options};

const USAGE: &str = "\
usage: vm-info [ADDRESS]

Prints a QEMU's version, run state, name, KVM status, CPUs and block devices.

ADDRESS is the QMP socket of a running QEMU: a Unix socket path, or HOST:PORT
(unix:PATH and tcp:HOST:PORT work too), as in
    qemu-system-x86_64 ... -qmp unix:/tmp/qmp.sock,server=on,wait=off
Without ADDRESS, vm-info asks a throwaway
    qemu-system-x86_64 -machine none -nodefaults -display none
which it starts, and stops when done.

options:
  -h, --help  print this help and exit
";

const NAME: &str = "vm-info";

/// Prints `NAME: message` on standard error (never panics).
fn warn(message: impl std::fmt::Display) {
    print_error(NAME, message);
}

fn main() -> ExitCode {
    let args = std::env::args_os().skip(1);
    let parse = |rest: Vec<_>| {
        parse_args(
            rest.into_iter()
                .map(|a: std::ffi::OsString| a.to_string_lossy().into_owned()),
        )
    };
    let address = match parse_with_tls(args, parse, |address| address) {
        Ok(Some(address)) => address,
        Ok(None) => {
            let _ = print_out(&format!("{USAGE}\n{TLS_USAGE}"));
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            let usage = USAGE.lines().next().unwrap_or_default();
            warn(format_args!(
                "{message}\n{usage}\nTry '{NAME} --help' for more information."
            ));
            return ExitCode::from(2);
        }
    };
    // Ctrl-C or SIGTERM: stop our QEMU (exit_on_signal does) and go.
    if let Err(e) = exit_on_signal(|| {}) {
        warn(format_args!("cannot handle signals: {e}"));
        return ExitCode::FAILURE;
    }
    let qemu = match address {
        Some(_) => None,
        None => match ThrowawayQemu::start() {
            Ok(qemu) => Some(qemu),
            Err(e) => {
                warn(format_args!("{e}"));
                return ExitCode::FAILURE;
            }
        },
    };
    let connected = match (&qemu, &address) {
        (Some(qemu), _) => qemu.connect(Options::default()),
        (None, Some(address)) => connect(address, Options::default()),
        (None, None) => unreachable!("a QEMU is started when no address is given"),
    };
    let code = match connected {
        Ok(mut client) => match report(&mut client) {
            Ok(text) => {
                let _ = print_out(&text);
                ExitCode::SUCCESS
            }
            Err(e) => {
                wait_if_exiting();
                warn(format_args!("{e}"));
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            wait_if_exiting();
            warn(format_args!("{e}"));
            ExitCode::FAILURE
        }
    };
    drop(qemu);
    wait_if_exiting();
    code
}

/// `Ok(None)` for `--help`, else the address if one was given.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Option<Address>>, String> {
    let mut address = None;
    let mut options_done = false;
    for arg in args {
        match arg.as_str() {
            "-h" | "--help" if !options_done => return Ok(None),
            "--" if !options_done => options_done = true,
            option if !options_done && option.len() > 1 && option.starts_with('-') => {
                return Err(format!("unknown option {option}"));
            }
            text if address.is_none() => {
                let parsed =
                    Address::parse(text).map_err(|e| format!("bad ADDRESS {text:?}: {e}"))?;
                address = Some(parsed);
            }
            text => return Err(format!("more than one ADDRESS: {text}")),
        }
    }
    Ok(Some(address))
}

/// A query's answer; a QMP error (the command missing from this QEMU, say) is shown in its
/// place, anything else (the connection failing) ends the report.
fn query<C>(
    client: &mut Client<Connection>,
    command: &C,
) -> Result<Result<C::Output<'static>, String>, String>
where
    C: Command,
    for<'de> C::Output<'de>: DeserializeOwned,
{
    match client.execute(command) {
        Ok(output) => Ok(Ok(output)),
        Err(Error::Qmp(e)) => Ok(Err(format!("(unavailable: {})", e.desc))),
        Err(e) => Err(format!("{}: {}", C::NAME, describe_error(&e))),
    }
}

/// The whole report, as text.
fn report(client: &mut Client<Connection>) -> Result<String, String> {
    let version = query(client, &QueryVersion)?.map(|v| {
        if v.package.is_empty() {
            v.qemu.to_string()
        } else {
            format!("{} ({})", v.qemu, v.package.trim())
        }
    });
    let status = query(client, &QueryStatus)?.map(|s| {
        // The QAPI name, as QEMU spells it (`running`, `prelaunch`, `paused`, …).
        match qmp_std::serde_json::to_value(s.status) {
            Ok(qmp_std::serde_json::Value::String(name)) => name,
            _ => format!("{:?}", s.status),
        }
    });
    let name = query(client, &QueryName)?.map(|n| n.name.unwrap_or_else(|| "-".to_owned()));
    let kvm = query(client, &QueryKvm)?.map(|k| {
        format!(
            "enabled: {}, present: {}",
            yes_no(k.enabled),
            yes_no(k.present)
        )
    });
    let cpus = query(client, &QueryCpusFast)?;
    let blocks = query(client, &QueryBlock)?;
    let nics = query(client, &QueryRxFilter::default())?;

    let mut text = String::new();
    for (label, value) in [
        ("QEMU", version),
        ("Status", status),
        ("Name", name),
        ("KVM", kvm),
    ] {
        let value = value.unwrap_or_else(|e| e);
        text.push_str(&format!("{label:<8}{value}\n"));
    }
    text.push('\n');
    match cpus {
        Ok(cpus) if cpus.is_empty() => text.push_str("CPUs: none\n"),
        Ok(cpus) => {
            text.push_str(&format!("CPUs ({}):\n", cpus.len()));
            text.push_str(&cpu_table(&cpus).render(2));
        }
        Err(e) => text.push_str(&format!("CPUs: {e}\n")),
    }
    text.push('\n');
    match blocks {
        Ok(blocks) if blocks.is_empty() => text.push_str("Block devices: none\n"),
        Ok(blocks) => {
            text.push_str(&format!("Block devices ({}):\n", blocks.len()));
            text.push_str(&block_table(&blocks).render(2));
        }
        Err(e) => text.push_str(&format!("Block devices: {e}\n")),
    }
    text.push('\n');
    match nics {
        Ok(nics) if nics.is_empty() => text.push_str("NICs: none\n"),
        Ok(nics) => {
            text.push_str(&format!("NICs ({}):\n", nics.len()));
            text.push_str(&nic_table(&nics).render(2));
        }
        Err(e) => text.push_str(&format!("NICs: {e}\n")),
    }
    Ok(text)
}

fn cpu_table(cpus: &[CpuInfoFast]) -> Table {
    let mut table = Table::new(["INDEX", "TARGET", "HOST THREAD", "TOPOLOGY", "QOM PATH"]);
    for cpu in cpus {
        let topology = cpu.props.as_ref().map(|p| {
            [
                ("node", p.node_id),
                ("socket", p.socket_id),
                ("die", p.die_id),
                ("cluster", p.cluster_id),
                ("core", p.core_id),
                ("thread", p.thread_id),
            ]
            .into_iter()
            .filter_map(|(what, id)| id.map(|id| format!("{what} {id}")))
            .collect::<Vec<_>>()
            .join(", ")
        });
        table.row([
            cpu.cpu_index.to_string(),
            cpu.target.clone(),
            cpu.thread_id.to_string(),
            topology
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "-".into()),
            cpu.qom_path.clone(),
        ]);
    }
    table
}

/// The NICs as their receive filters describe them (`query-rx-filter`: the NICs whose model
/// reports one, virtio-net among them).
fn nic_table(nics: &[RxFilterInfo]) -> Table {
    let mut table = Table::new(["NAME", "MAC", "PROMISCUOUS", "BROADCAST"]);
    for nic in nics {
        table.row([
            nic.name.clone(),
            nic.main_mac.clone(),
            yes_no(nic.promiscuous).to_owned(),
            yes_no(nic.broadcast_allowed).to_owned(),
        ]);
    }
    table
}

fn block_table(blocks: &[BlockInfo]) -> Table {
    let mut table = Table::new(["DEVICE", "DRIVER", "SIZE", "MODE", "REMOVABLE", "MEDIUM"]);
    for block in blocks {
        let device = if block.device.is_empty() {
            block.qdev.clone().unwrap_or_else(|| "-".into())
        } else {
            block.device.clone()
        };
        let removable = yes_no(block.removable).to_owned();
        match &block.inserted {
            Some(node) => table.row([
                device,
                node.drv.clone(),
                size(node.image.virtual_size),
                if node.ro { "ro" } else { "rw" }.to_owned(),
                removable,
                node.file.clone(),
            ]),
            None => {
                let medium = if block.tray_open == Some(true) {
                    "(tray open)"
                } else {
                    "(no medium)"
                };
                table.row([
                    device,
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    removable,
                    medium.into(),
                ])
            }
        };
    }
    table
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Bytes in binary units: `512 B`, `1 MiB`, `1.5 GiB`.
fn size(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut scaled = bytes as f64;
    while scaled.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    if scaled.fract() == 0.0 {
        format!("{scaled:.0} {}", UNITS[unit])
    } else {
        format!("{scaled:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1024), "1 KiB");
        assert_eq!(size(1 << 20), "1 MiB");
        assert_eq!(size(3 << 29), "1.5 GiB");
        assert_eq!(size(1_000_000), "976.6 KiB");
    }

    #[test]
    fn arguments() {
        let parse = |args: &[&str]| parse_args(args.iter().map(|a| a.to_string()));
        assert_eq!(parse(&[]), Ok(Some(None)));
        assert_eq!(parse(&["--help"]), Ok(None));
        assert_eq!(
            parse(&["/tmp/q.sock"]),
            Ok(Some(Some(Address::Unix("/tmp/q.sock".into()))))
        );
        assert!(parse(&["-x"]).is_err());
        assert!(parse(&["a", "b"]).is_err());
        assert!(parse(&["h:0"]).is_err());
    }
}
