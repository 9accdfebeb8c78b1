//! `qga`: QEMU's guest agent from the host, in the spirit of QEMU's `qemu-ga-client`.
//!
//! ```text
//! qga [-p] [-t SECONDS] ADDRESS COMMAND [ARGS]
//! ```
//!
//! ADDRESS is the agent's socket (a Unix path, `HOST:PORT`, `unix:PATH`, `tcp:HOST:PORT`:
//! `qemu-ga -m unix-listen`, or the QEMU chardev behind a guest's agent port), or a serial
//! device (`serial:PATH`, or any path that is a character device). Commands:
//!
//! - `ping`: exits 0 when the agent answers.
//! - `info`: the agent's version and commands.
//! - `osinfo`, `hostname`: the guest's operating system, its host name.
//! - `exec [--] PROGRAM [ARGS...]`: runs a program in the guest, prints its standard output
//!   and error, and exits with its exit status (128 + N for a signal N).
//! - `cat FILE`: prints a file of the guest.
//! - `fsfreeze status`: `thawed` or `frozen`.
//! - `guest-* [KEY=VALUE...]`: any agent command, with qmp-shell's argument syntax; prints
//!   the result as JSON (`-p`: pretty).

use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::process::ExitCode;
use std::time::Duration;

use qmp_examples::args::parse_pairs;
use qmp_examples::{Address, describe_error, json_line, json_pretty, print_error};
use qmp_std::agent::{Agent, AgentBuilder};
use qmp_std::agent_commands::{
    GuestFsfreezeStatus, GuestGetHostName, GuestGetOsinfo, GuestInfo, GuestPing,
};
use qmp_std::serde_json::Value;
use qmp_std::{Options, Serial, Stream};

const USAGE: &str = "usage: qga [-p] [-t SECONDS] ADDRESS COMMAND [ARGS]
commands: ping | info | osinfo | hostname | exec [--] PROGRAM [ARGS...] | cat FILE
          | fsfreeze status | guest-* [KEY=VALUE...]";

/// What went wrong, and the exit code for it.
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            message: format!("{}\n{USAGE}", message.into()),
            code: 2,
        }
    }
}

impl From<qmp_std::Error> for Failure {
    fn from(e: qmp_std::Error) -> Self {
        Self {
            message: describe_error(&e),
            code: 1,
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self {
            message: qmp_examples::io_message(&e),
            code: 1,
        }
    }
}

struct Args {
    pretty: bool,
    timeout: Option<Duration>,
    address: String,
    command: Vec<String>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, Failure> {
    let mut pretty = false;
    let mut timeout = None;
    let address = loop {
        match args.next() {
            Some(flag) if flag == "-p" => pretty = true,
            Some(flag) if flag == "-t" => {
                let seconds: f64 = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| Failure::usage("-t needs a number of seconds"))?;
                timeout = Some(Duration::from_secs_f64(seconds));
            }
            Some(flag) if flag == "-h" || flag == "--help" => {
                return Err(Failure {
                    message: USAGE.into(),
                    code: 0,
                });
            }
            Some(flag) if flag.starts_with('-') && flag.len() > 1 => {
                return Err(Failure::usage(format!("unknown option {flag}")));
            }
            Some(address) => break address,
            None => return Err(Failure::usage("no address")),
        }
    };
    let command: Vec<String> = args.collect();
    if command.is_empty() {
        return Err(Failure::usage("no command"));
    }
    Ok(Args {
        pretty,
        timeout,
        address,
        command,
    })
}

fn main() -> ExitCode {
    let result = parse_args(std::env::args().skip(1)).and_then(|args| {
        let mut options = Options::default();
        if let Some(t) = args.timeout {
            options.command_timeout = Some(t);
            options.connect_timeout = Some(t);
        }
        connect_and_run(&args, options)
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) if f.code == 0 => {
            let _ = qmp_examples::print_out(&format!("{}\n", f.message));
            ExitCode::SUCCESS
        }
        Err(f) => {
            print_error("qga", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn connect_and_run(args: &Args, options: Options) -> Result<u8, Failure> {
    let builder = AgentBuilder::with_options(options);
    let serial = args.address.strip_prefix("serial:").or_else(|| {
        std::fs::metadata(&args.address)
            .ok()
            .filter(|m| m.file_type().is_char_device())
            .map(|_| args.address.as_str())
    });
    if let Some(path) = serial {
        let stream = Serial::open(path)?;
        return run(&mut builder.handshake(stream)?, args);
    }
    let address = Address::parse(&args.address).map_err(|e| Failure::usage(e.to_string()))?;
    let Some(stream) = qmp_examples::connect_socket(&address, args.timeout) else {
        return Err(Failure::usage(
            "the guest agent is reached over a socket or a serial line, not TLS",
        ));
    };
    let stream = stream.map_err(|e| Failure {
        message: format!("{address}: {}", qmp_examples::io_message(&e)),
        code: 1,
    })?;
    run(&mut builder.handshake(stream)?, args)
}

fn print_json(value: &Value, pretty: bool) -> io::Result<()> {
    let text = if pretty {
        json_pretty(value)
    } else {
        json_line(value)
    };
    qmp_examples::print_out(&format!("{text}\n"))
}

fn write_bytes(out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(bytes)?;
    out.flush()
}

fn run<S: Stream>(agent: &mut Agent<S>, args: &Args) -> Result<u8, Failure> {
    let words: Vec<&str> = args.command.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["ping"] => {
            agent.execute(&GuestPing)?;
        }
        ["info"] => {
            let info = agent.execute(&GuestInfo)?;
            let mut text = format!("version: {}\n", info.version);
            let mut commands = info.supported_commands;
            commands.sort_by(|a, b| a.name.cmp(&b.name));
            for c in commands {
                let mut notes = Vec::new();
                if !c.enabled {
                    notes.push("disabled");
                }
                if !c.success_response {
                    notes.push("no reply on success");
                }
                text += &match notes.is_empty() {
                    true => format!("  {}\n", c.name),
                    false => format!("  {} ({})\n", c.name, notes.join(", ")),
                };
            }
            qmp_examples::print_out(&text)?;
        }
        ["osinfo"] => {
            let os = agent.execute(&GuestGetOsinfo)?;
            let fields = [
                ("name", &os.name),
                ("pretty-name", &os.pretty_name),
                ("id", &os.id),
                ("version", &os.version),
                ("version-id", &os.version_id),
                ("variant", &os.variant),
                ("variant-id", &os.variant_id),
                ("kernel-release", &os.kernel_release),
                ("kernel-version", &os.kernel_version),
                ("machine", &os.machine),
            ];
            let mut text = String::new();
            for (key, value) in fields {
                if let Some(value) = value {
                    text += &format!("{key}: {value}\n");
                }
            }
            qmp_examples::print_out(&text)?;
        }
        ["hostname"] => {
            let host = agent.execute(&GuestGetHostName)?;
            qmp_examples::print_out(&format!("{}\n", host.host_name))?;
        }
        ["fsfreeze", "status"] => {
            let status = agent.execute(&GuestFsfreezeStatus)?;
            let text = qmp_std::serde_json::to_value(status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            qmp_examples::print_out(&format!("{text}\n"))?;
        }
        ["cat", file] => {
            let data = agent.read_file(file)?;
            write_bytes(&mut io::stdout().lock(), &data)?;
        }
        ["exec", rest @ ..] => {
            let rest = match rest {
                ["--", rest @ ..] => rest,
                rest => rest,
            };
            let Some((program, program_args)) = rest.split_first() else {
                return Err(Failure::usage("exec needs a program"));
            };
            let (status, out, err) = agent.run(program, program_args.iter().copied())?;
            write_bytes(&mut io::stdout().lock(), &out)?;
            write_bytes(&mut io::stderr().lock(), &err)?;
            return Ok(match (status.exitcode, status.signal) {
                (Some(code), _) => u8::try_from(code).unwrap_or(1),
                (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
                (None, None) => 1,
            });
        }
        [name, pairs @ ..] if name.starts_with("guest-") => {
            let pairs: Vec<String> = pairs.iter().map(|s| s.to_string()).collect();
            let arguments = parse_pairs(&pairs).map_err(Failure::usage)?;
            let value = agent.execute_raw(name, &Value::Object(arguments))?;
            print_json(&value, args.pretty)?;
        }
        _ => {
            return Err(Failure::usage(format!(
                "unknown command {:?}",
                args.command.join(" ")
            )));
        }
    }
    Ok(0)
}
