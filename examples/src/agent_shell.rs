//! `qmp-shell --qga ADDRESS`: a shell for QEMU's guest agent, with qmp-shell's input syntax
//! (`guest-COMMAND [KEY=VALUE ...]` or a JSON object) and its output (one JSON reply per
//! line, `-p` pretty). It syncs with the agent on connect (see `qmp_std::agent`); there are
//! no events. On a terminal it has line editing; otherwise it reads standard input to its
//! end.

use std::io::{self, BufRead};
use std::process::ExitCode;

use qmp_std::agent::{Agent, AgentBuilder};
use qmp_std::serde_json::{Map, Value};
use qmp_std::{Options, Stream};

use crate::args::{parse_pairs, split_words};
use crate::{Address, describe_error, json_line, json_pretty, print_error, print_out};

const NAME: &str = "qmp-shell";

/// Runs the agent shell on `address` (required); the exit status as qmp-shell's: 0 at the
/// end of input, 1 if the connection fails or breaks, 2 without an address.
pub fn run(address: Option<&Address>, pretty: bool, interactive: bool) -> ExitCode {
    let Some(address) = address else {
        print_error(NAME, "--qga needs the agent's ADDRESS");
        return ExitCode::from(2);
    };
    let stream =
        crate::connect_socket(address, Options::default().connect_timeout).unwrap_or_else(|| {
            Err(io::Error::other(
                "the guest agent is reached over a socket or a serial line, not TLS",
            ))
        });
    let mut options = Options::default();
    // As qmp-shell: wait as long as the agent takes (Ctrl-C gives up).
    options.command_timeout = None;
    let agent = stream
        .map_err(qmp_std::Error::Io)
        .and_then(|s| AgentBuilder::with_options(options).handshake(s));
    let mut agent = match agent {
        Ok(agent) => agent,
        Err(e) => {
            print_error(NAME, format_args!("{address}: {}", describe_error(&e)));
            return ExitCode::FAILURE;
        }
    };
    if interactive {
        let Ok(mut editor) = rustyline::DefaultEditor::new() else {
            return lines(&mut agent, io::stdin().lock(), pretty);
        };
        loop {
            match editor.readline("(QGA) ") {
                Ok(line) => {
                    let _ = editor.add_history_entry(line.as_str());
                    if let Err(code) = one_line(&mut agent, &line, pretty) {
                        return code;
                    }
                }
                Err(_) => return ExitCode::SUCCESS,
            }
        }
    }
    lines(&mut agent, io::stdin().lock(), pretty)
}

fn lines<S: Stream>(agent: &mut Agent<S>, input: impl BufRead, pretty: bool) -> ExitCode {
    for line in input.lines() {
        let Ok(line) = line else {
            return ExitCode::FAILURE;
        };
        if let Err(code) = one_line(agent, &line, pretty) {
            return code;
        }
    }
    ExitCode::SUCCESS
}

/// Runs one input line and prints its reply; `Err` with the exit status once the
/// connection is gone.
fn one_line<S: Stream>(agent: &mut Agent<S>, line: &str, pretty: bool) -> Result<(), ExitCode> {
    let (name, arguments) = match parse(line) {
        Ok(Some(command)) => command,
        Ok(None) => return Ok(()),
        Err(message) => {
            print_error(NAME, message);
            return Ok(());
        }
    };
    let result = agent.execute_raw(&name, &Value::Object(arguments));
    let reply = match result {
        Ok(value) => crate::reply_json(&Ok(value)),
        Err(qmp_std::Error::Qmp(e)) => crate::reply_json(&Err(e)),
        Err(e) if agent.is_closed() => {
            print_error(NAME, describe_error(&e));
            return Err(ExitCode::FAILURE);
        }
        Err(e) => {
            print_error(NAME, describe_error(&e));
            return Ok(());
        }
    };
    let text = if pretty {
        json_pretty(&reply)
    } else {
        json_line(&reply)
    };
    if print_out(&format!("{text}\n")).is_err() {
        return Err(ExitCode::FAILURE);
    }
    Ok(())
}

/// A command's name and arguments.
type Command = (String, Map<String, Value>);

/// A line as a command: `NAME [KEY=VALUE ...]` or `{"execute": NAME, "arguments": {...}}`;
/// `None` for an empty line.
fn parse(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    if line.starts_with('{') {
        let value: Value =
            qmp_std::serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
        let name = value["execute"]
            .as_str()
            .ok_or("a JSON command needs \"execute\"")?
            .to_owned();
        let arguments = match value.get("arguments") {
            None => Map::new(),
            Some(Value::Object(a)) => a.clone(),
            Some(_) => return Err("\"arguments\" must be an object".into()),
        };
        return Ok(Some((name, arguments)));
    }
    let words = split_words(line)?;
    let (name, pairs) = words.split_first().expect("a non-empty line has a word");
    Ok(Some((name.clone(), parse_pairs(pairs)?)))
}
