//! `qmp-shell`: a shell for the QEMU Monitor Protocol, after QEMU's own
//! `scripts/qmp/qmp-shell`.
//!
//! Run `qmp-shell --help` for the usage. On a terminal it is a line editor with history and
//! command-name completion that prints events as they arrive; with a pipe or file on standard
//! input it prints each reply and event as one JSON object per line and exits 0 at the end of
//! the input. Without an address it starts, and on exit stops, a throwaway
//! `qemu-system-x86_64 -machine none`.

use std::io::{self, IsTerminal};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use qmp_examples::{
    Address, Connection, ThrowawayQemu, connect, describe_error, event_json, exit_on_signal,
    json_line, json_pretty, print_error, print_out, reply_json, wait_if_exiting,
};
use qmp_std::serde_json::{self, Map, Value};
use qmp_std::{Client, Error, Options, QmpError};
use rustix::event::{PollFd, PollFlags};
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Editor, Helper};

const USAGE: &str = "\
usage: qmp-shell [-p] [-H] [-N] [-v] [ADDRESS]

A shell for the QEMU Monitor Protocol (QMP), after QEMU's scripts/qmp/qmp-shell.

ADDRESS is the QMP socket of a running QEMU: a Unix socket path, or HOST:PORT
(unix:PATH and tcp:HOST:PORT work too), as in
    qemu-system-x86_64 ... -qmp unix:/tmp/qmp.sock,server=on,wait=off
Without ADDRESS, qmp-shell starts a throwaway
    qemu-system-x86_64 -machine none -nodefaults -display none
on a temporary socket, and stops it on exit.

options:
  -p, --pretty            pretty-print JSON (4-space indents, sorted keys)
  -H, --hmp               send lines as HMP commands (through
                          human-monitor-command) and print the text they
                          return; `cpu N` picks the CPU for later commands
  -N, --skip-negotiation  do not negotiate capabilities: type qmp_capabilities
                          yourself (commands before it get CommandNotFound)
  -v, --verbose           echo each command sent, as JSON
  -h, --help              print this help and exit

Input, one command per line:
  COMMAND [KEY=VALUE ...]  a value that parses as JSON is JSON (42, true, null,
                           \"a string\", [1, 2], {\"a\": 1}); 'single quotes' make a
                           string with spaces; anything else is a string.
                           Dotted keys nest: a.b=1 sends {\"a\": {\"b\": 1}}.
  {\"execute\": ...}         a JSON object, sent as is; its own id comes back.
  transaction(             start a transaction: one action per line (ACTION
                           [KEY=VALUE ...]) until a line with `)`; the one-line
                           form is `transaction( ACTION [KEY=VALUE ...] )`.

Replies, errors and events print as JSON, one object per line unless -p; events
print as they arrive. On a terminal the shell has line editing, history
(~/.qmp-shell-rs_history) and Tab completion of command names; Ctrl-D or Ctrl-C
leaves. Otherwise it reads standard input to its end and exits 0.

Exit status: 0 at the end of input or once `quit` is answered; 1 if the
connection fails or breaks; 2 for a usage error; 128+N on signal N (130 for a
Ctrl-C while a command runs or when input is not a terminal).

examples:
  query-status
  qom-get path=/machine property=type
  human-monitor-command command-line='info status'
  blockdev-add driver=null-co node-name=null0 size=1048576
  {\"execute\": \"query-name\", \"id\": \"mine\"}
";

const NAME: &str = "qmp-shell";

/// Prints `NAME: message` on standard error (never panics).
fn warn(message: impl std::fmt::Display) {
    print_error(NAME, message);
}

/// How long an idle wait for events blocks on one read: long enough to pick up what the
/// socket already holds.
const EVENT_POLL: Duration = Duration::from_millis(1);

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args_os().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            let _ = print_out(USAGE);
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
    let interactive = io::stdin().is_terminal() && io::stdout().is_terminal();
    let terminal = interactive
        .then(|| rustix::termios::tcgetattr(io::stdin()).ok())
        .flatten();

    // Ctrl-C while a command runs (or anywhere outside the line editor, which reads Ctrl-C
    // itself), SIGTERM or SIGHUP: stop our QEMU, put the terminal back, and go.
    if let Err(e) = exit_on_signal(move || {
        if let Some(mode) = terminal {
            let _ = rustix::termios::tcsetattr(
                io::stdin(),
                rustix::termios::OptionalActions::Now,
                &mode,
            );
        }
    }) {
        warn(format_args!("cannot handle signals: {e}"));
        return ExitCode::FAILURE;
    }
    let qemu = match args.address {
        Some(_) => None,
        None => match ThrowawayQemu::start() {
            Ok(qemu) => Some(qemu),
            Err(e) => {
                warn(format_args!("{e}"));
                return ExitCode::FAILURE;
            }
        },
    };

    let mut options = Options::default();
    options.negotiate = !args.skip_negotiation;
    // A shell waits as long as QEMU takes (HMP's savevm can take minutes); Ctrl-C gives up.
    options.command_timeout = None;
    let connected = match (&qemu, &args.address) {
        (Some(qemu), _) => qemu.connect(options),
        (None, Some(address)) => connect(address, options),
        (None, None) => unreachable!("a QEMU is started when no address is given"),
    };
    let client = match connected {
        Ok(client) => client,
        Err(e) => {
            warn(format_args!("{e}"));
            return ExitCode::FAILURE;
        }
    };
    let shell = Shell::new(client, &args);
    let code = if interactive {
        interactive_loop(shell, &args, qemu.is_some())
    } else {
        line_loop(shell)
    };
    drop(qemu);
    wait_if_exiting();
    code
}

// ---- command line --------------------------------------------------------------------------

/// The command line.
#[derive(Debug, Default)]
struct Args {
    pretty: bool,
    hmp: bool,
    skip_negotiation: bool,
    verbose: bool,
    address: Option<Address>,
}

impl Args {
    /// `Ok(None)` for `--help`; `Err` says what is wrong.
    fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Option<Args>, String> {
        let mut parsed = Args::default();
        let mut address = None;
        let mut options_done = false;
        for arg in args {
            let arg = arg
                .into_string()
                .map_err(|a| format!("argument is not UTF-8: {a:?}"))?;
            if !options_done && arg.starts_with("--") {
                match arg.as_str() {
                    "--" => options_done = true,
                    "--pretty" => parsed.pretty = true,
                    "--hmp" => parsed.hmp = true,
                    "--skip-negotiation" => parsed.skip_negotiation = true,
                    "--verbose" => parsed.verbose = true,
                    "--help" => return Ok(None),
                    _ => return Err(format!("unknown option {arg}")),
                }
            } else if !options_done && arg.len() > 1 && arg.starts_with('-') {
                for flag in arg[1..].chars() {
                    match flag {
                        'p' => parsed.pretty = true,
                        'H' => parsed.hmp = true,
                        'N' => parsed.skip_negotiation = true,
                        'v' => parsed.verbose = true,
                        'h' => return Ok(None),
                        _ => return Err(format!("unknown option -{flag}")),
                    }
                }
            } else if address.is_none() {
                address = Some(arg);
            } else {
                return Err(format!("more than one ADDRESS: {arg}"));
            }
        }
        if let Some(text) = address {
            let address =
                Address::parse(&text).map_err(|e| format!("bad ADDRESS {text:?}: {e}"))?;
            parsed.address = Some(address);
        }
        Ok(Some(parsed))
    }
}

// ---- input lines ---------------------------------------------------------------------------

/// What one input line asks for.
#[derive(Debug, PartialEq)]
enum Input {
    /// Nothing to send (an empty line, or a transaction action kept for later).
    Nothing,
    /// `COMMAND KEY=VALUE ...` (or a finished transaction).
    Command {
        name: String,
        arguments: Map<String, Value>,
    },
}

/// Turns `COMMAND KEY=VALUE ...` lines into commands, keeping transaction state across lines.
#[derive(Debug, Default)]
struct LineParser {
    /// The actions of an open `transaction(`.
    actions: Option<Vec<Value>>,
}

impl LineParser {
    fn in_transaction(&self) -> bool {
        self.actions.is_some()
    }

    fn parse(&mut self, line: &str) -> Result<Input, String> {
        let mut words = split_words(line)?;
        if words.first().map(String::as_str) == Some("transaction(") {
            self.actions = Some(Vec::new());
            words.remove(0);
        }
        let Some(actions) = &mut self.actions else {
            return match words.split_first() {
                None => Ok(Input::Nothing),
                Some((name, pairs)) => Ok(Input::Command {
                    name: name.clone(),
                    arguments: parse_pairs(pairs)?,
                }),
            };
        };
        let finish = words.last().map(String::as_str) == Some(")");
        if finish {
            words.pop();
        }
        if let Some((action, pairs)) = words.split_first() {
            if action == ")" {
                return Err("unexpected input after the ) that closes the transaction".into());
            }
            let mut object = Map::new();
            object.insert("type".into(), Value::String(action.clone()));
            object.insert("data".into(), Value::Object(parse_pairs(pairs)?));
            actions.push(Value::Object(object));
        }
        if !finish {
            return Ok(Input::Nothing);
        }
        let actions = self.actions.take().unwrap_or_default();
        let mut arguments = Map::new();
        arguments.insert("actions".into(), Value::Array(actions));
        Ok(Input::Command {
            name: "transaction".into(),
            arguments,
        })
    }
}

/// Splits a line at whitespace outside quotes; `"..."` (with backslash escapes) and `'...'`
/// keep their quotes, for [`parse_value`] to read.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '"' | '\'' => {
                in_word = true;
                word.push(c);
                loop {
                    let Some(next) = chars.next() else {
                        return Err(format!("unterminated {c}quote{c}"));
                    };
                    word.push(next);
                    if next == c {
                        break;
                    }
                    if next == '\\'
                        && c == '"'
                        && let Some(escaped) = chars.next()
                    {
                        word.push(escaped);
                    }
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// `KEY=VALUE` words into an arguments object; dotted keys nest.
fn parse_pairs(pairs: &[String]) -> Result<Map<String, Value>, String> {
    let mut arguments = Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("expected KEY=VALUE, got {pair:?}"));
        };
        let path: Vec<&str> = key.split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(format!("bad key {key:?}"));
        }
        let (last, parents) = path.split_last().expect("split yields at least one part");
        let mut object = &mut arguments;
        for (depth, part) in parents.iter().enumerate() {
            let entry = object
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            object = match entry {
                Value::Object(inner) => inner,
                _ => {
                    return Err(format!(
                        "{:?} is both a value and an object",
                        path[..=depth].join(".")
                    ));
                }
            };
        }
        match object.get(*last) {
            Some(Value::Object(_)) => {
                return Err(format!("{key:?} is both a value and an object"));
            }
            Some(_) => return Err(format!("{key:?} is set twice")),
            None => {
                object.insert(last.to_string(), parse_value(value));
            }
        }
    }
    Ok(arguments)
}

/// A value: JSON if it parses as JSON, the inside of `'single quotes'`, or else the text.
fn parse_value(text: &str) -> Value {
    if let Ok(value) = serde_json::from_str(text) {
        return value;
    }
    if let Some(inner) = text
        .strip_prefix('\'')
        .and_then(|rest| rest.strip_suffix('\''))
    {
        return Value::String(inner.to_owned());
    }
    Value::String(text.to_owned())
}

// ---- the shell -----------------------------------------------------------------------------

/// Why the shell stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Finished normally (end of input, a `quit` answered, standard output closed).
    Done,
    /// The connection broke; the message was printed.
    Failed,
}

impl Stop {
    fn code(self) -> ExitCode {
        match self {
            Stop::Done => ExitCode::SUCCESS,
            Stop::Failed => ExitCode::FAILURE,
        }
    }
}

/// The connection is gone.
struct Lost {
    /// Events that came before, as text to print.
    events: String,
    stop: Stop,
    /// Why, for the user (none after `quit`).
    message: Option<String>,
}

/// The connection and what the shell prints; the same for both modes.
struct Shell {
    client: Client<Connection>,
    pretty: bool,
    hmp: bool,
    verbose: bool,
    parser: LineParser,
    /// The CPU HMP commands run on (`cpu N` in `-H` mode).
    cpu_index: Option<i64>,
    /// A `quit` was answered: the connection closing is expected.
    quitting: bool,
    /// Command names for completion (interactive mode only), refreshed once capabilities
    /// are negotiated.
    names: Option<Arc<Mutex<Vec<String>>>>,
}

impl Shell {
    fn new(client: Client<Connection>, args: &Args) -> Shell {
        Shell {
            client,
            pretty: args.pretty,
            hmp: args.hmp,
            verbose: args.verbose,
            parser: LineParser::default(),
            cpu_index: None,
            quitting: false,
            names: None,
        }
    }

    /// Turns on command-name completion: the list to complete from, kept up to date.
    fn completion(&mut self) -> Arc<Mutex<Vec<String>>> {
        let names = Arc::clone(self.names.get_or_insert_default());
        self.refresh_names();
        names
    }

    fn json(&self, value: &Value) -> String {
        if self.pretty {
            json_pretty(value)
        } else {
            json_line(value)
        }
    }

    /// Prints to standard output; a closed standard output ends the shell.
    fn print(&self, text: &str) -> Result<(), Stop> {
        if text.is_empty() {
            return Ok(());
        }
        // Leaving on a signal: what QEMU says as it goes is no news.
        wait_if_exiting();
        print_out(text).map_err(|_| Stop::Done)
    }

    fn print_json(&self, value: &Value) -> Result<(), Stop> {
        self.print(&(self.json(value) + "\n"))
    }

    /// Events received so far, as text to print.
    fn take_events(&mut self) -> String {
        let events: Vec<_> = self.client.events().collect();
        let mut text = String::new();
        for event in &events {
            text.push_str(&self.json(&event_json(event)));
            text.push('\n');
        }
        text
    }

    fn print_events(&mut self) -> Result<(), Stop> {
        let text = self.take_events();
        self.print(&text)
    }

    /// Reads what the server has sent (without waiting for more) and returns the events as
    /// text; `Err` once the connection is gone.
    fn poll_events(&mut self) -> Result<String, Lost> {
        let mut text = self.take_events();
        loop {
            match self.client.next_event(EVENT_POLL) {
                Ok(event) => {
                    text.push_str(&self.json(&event_json(&event)));
                    text.push('\n');
                }
                Err(Error::Timeout(_)) => return Ok(text),
                Err(e) => {
                    let (stop, message) = self.connection_lost(&e);
                    return Err(Lost {
                        events: text,
                        stop,
                        message,
                    });
                }
            }
        }
    }

    /// What the end of the connection means: expected after `quit`, else a failure, with a
    /// message for the user.
    fn connection_lost(&self, error: &Error) -> (Stop, Option<String>) {
        wait_if_exiting();
        if self.quitting {
            (Stop::Done, None)
        } else {
            (Stop::Failed, Some(describe_error(error)))
        }
    }

    /// Runs one input line and prints what comes back (events first: they arrived first).
    fn handle_line(&mut self, line: &str) -> Result<(), Stop> {
        let line = line.trim();
        if self.hmp {
            if line.is_empty() {
                return self.print_events();
            }
            return self.run_hmp(line);
        }
        if line.starts_with(['{', '[']) {
            return self.run_json(line);
        }
        match self.parser.parse(line) {
            Ok(Input::Nothing) => self.print_events(),
            Ok(Input::Command { name, arguments }) => self.run(&name, arguments),
            Err(e) => {
                warn(format_args!(
                    "bad line: {e} (format: COMMAND [KEY=VALUE ...])"
                ));
                Ok(())
            }
        }
    }

    /// Sends a command (echoing it with `-v`), waits for its outcome, and prints the events
    /// that came meanwhile; `None` if it got no answer (already reported).
    fn execute(
        &mut self,
        name: &str,
        arguments: Value,
    ) -> Result<Option<Result<Value, QmpError>>, Stop> {
        let handle = match self.client.send_raw(name, &arguments) {
            Ok(handle) => handle,
            Err(e) => return self.failed(&e).map(|()| None),
        };
        if self.verbose {
            let mut sent = Map::new();
            sent.insert("execute".into(), Value::String(name.to_owned()));
            if !arguments.is_null() {
                sent.insert("arguments".into(), arguments);
            }
            sent.insert("id".into(), handle.id().into());
            self.print_json(&Value::Object(sent))?;
        }
        let result = self.client.wait(handle);
        self.print_events()?;
        match result {
            Ok(value) => Ok(Some(Ok(value))),
            Err(Error::Qmp(e)) => Ok(Some(Err(e))),
            Err(e) => self.failed(&e).map(|()| None),
        }
    }

    /// `COMMAND KEY=VALUE ...`: prints the reply.
    fn run(&mut self, name: &str, arguments: Map<String, Value>) -> Result<(), Stop> {
        let arguments = if arguments.is_empty() {
            Value::Null
        } else {
            Value::Object(arguments)
        };
        let Some(result) = self.execute(name, arguments)? else {
            return Ok(());
        };
        self.print_json(&reply_json(&result))?;
        if result.is_ok() {
            self.succeeded(name);
        }
        Ok(())
    }

    /// Notes what a successful command changed.
    fn succeeded(&mut self, name: &str) {
        match name {
            "quit" => self.quitting = true,
            "qmp_capabilities" => self.refresh_names(),
            _ => {}
        }
    }

    fn run_json(&mut self, line: &str) -> Result<(), Stop> {
        let message: Value = match serde_json::from_str(line) {
            Ok(Value::Object(object)) => Value::Object(object),
            Ok(_) => {
                warn(format_args!("a JSON line must be an object"));
                return Ok(());
            }
            Err(e) => {
                warn(format_args!("invalid JSON: {e}"));
                return Ok(());
            }
        };
        if self.verbose {
            self.print_json(&message)?;
        }
        let result = self.client.request(&message);
        self.print_events()?;
        match result {
            Ok(reply) => {
                self.print_json(&reply)?;
                if reply.get("return").is_some()
                    && let Some(name) = message.get("execute").and_then(Value::as_str)
                {
                    self.succeeded(name);
                }
                Ok(())
            }
            Err(e) => self.failed(&e),
        }
    }

    fn run_hmp(&mut self, line: &str) -> Result<(), Stop> {
        let mut words = line.split_whitespace();
        if words.next() == Some("cpu") {
            return match (words.next().map(str::parse::<i64>), words.next()) {
                (Some(Ok(index)), None) => self.select_cpu(index),
                _ => {
                    warn(format_args!("usage: cpu INDEX"));
                    Ok(())
                }
            };
        }
        match self.hmp_command(line, self.cpu_index)? {
            Some(Ok(text)) => {
                let mut text = text.replace("\r\n", "\n");
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                self.print(&text)
            }
            Some(Err(error)) => self.print_json(&error),
            None => Ok(()),
        }
    }

    /// `cpu N`: checks that the CPU exists, then runs later HMP commands on it.
    fn select_cpu(&mut self, index: i64) -> Result<(), Stop> {
        match self.hmp_command("info version", Some(index))? {
            Some(Ok(_)) => {
                self.cpu_index = Some(index);
                Ok(())
            }
            Some(Err(error)) => self.print_json(&error),
            None => Ok(()),
        }
    }

    /// Runs an HMP command line: its text, or the error reply; `None` if it got no answer
    /// (already reported).
    fn hmp_command(
        &mut self,
        line: &str,
        cpu_index: Option<i64>,
    ) -> Result<Option<Result<String, Value>>, Stop> {
        let mut arguments = Map::new();
        arguments.insert("command-line".into(), Value::String(line.to_owned()));
        if let Some(index) = cpu_index {
            arguments.insert("cpu-index".into(), index.into());
        }
        let outcome = self.execute("human-monitor-command", Value::Object(arguments))?;
        Ok(outcome.map(|result| match result {
            Ok(Value::String(text)) => Ok(text),
            Ok(other) => Ok(self.json(&other) + "\n"),
            Err(e) => Err(reply_json(&Err(e))),
        }))
    }

    /// A command got no reply: a lost connection ends the shell, anything else is reported.
    fn failed(&mut self, error: &Error) -> Result<(), Stop> {
        self.print_events()?;
        if error.is_disconnect() || self.client.is_closed() {
            let (stop, message) = self.connection_lost(error);
            if let Some(message) = message {
                warn(message);
            }
            return Err(stop);
        }
        warn(format_args!("{}", describe_error(error)));
        Ok(())
    }

    /// Fills the completion list: QMP command names, or HMP commands in `-H` mode.
    fn refresh_names(&mut self) {
        let Some(list) = self.names.clone() else {
            return;
        };
        let names = if !self.client.is_negotiated() {
            vec!["qmp_capabilities".to_owned()]
        } else if self.hmp {
            self.hmp_names()
        } else {
            match self.client.execute(&qmp_std::commands::QueryCommands) {
                Ok(commands) => commands.into_iter().map(|c| c.name).collect(),
                Err(_) => Vec::new(),
            }
        };
        let mut names = names;
        names.sort();
        names.dedup();
        *lock(&list) = names;
    }

    /// HMP command names from `help` (lines `name|alias args -- text`) and `info` subcommands
    /// from `info` (lines `info name -- text`).
    fn hmp_names(&mut self) -> Vec<String> {
        let mut names = Vec::new();
        if let Ok(help) = self.client.hmp("help") {
            for line in help.lines() {
                if line.starts_with(['[', '\t', ' ']) {
                    continue;
                }
                let Some(word) = line.split_whitespace().next() else {
                    continue;
                };
                // `name|n`: the longest spelling.
                let name = word.split('|').max_by_key(|n| n.len()).unwrap_or(word);
                if name != "info" {
                    names.push(format!("help {name}"));
                }
                names.push(name.to_owned());
            }
        }
        if let Ok(info) = self.client.hmp("info") {
            for line in info.lines() {
                let mut words = line.split_whitespace();
                if let (Some("info"), Some(what)) = (words.next(), words.next()) {
                    names.push(format!("info {what}"));
                }
            }
        }
        names
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---- standard input is not a terminal --------------------------------------------------------

/// Reads standard input line by line, printing replies, and events as they arrive.
fn line_loop(mut shell: Shell) -> ExitCode {
    let stdin = rustix::stdio::stdin();
    let socket = shell.client.stream().as_fd().try_clone_to_owned();
    let Ok(socket) = socket else {
        warn(format_args!("cannot watch the connection"));
        return ExitCode::FAILURE;
    };
    let mut pending = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    let mut input_done = false;
    let result = loop {
        // Whole lines first; the last one may lack its newline.
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Err(stop) = shell.handle_line(&String::from_utf8_lossy(&line)) {
                return stop.code();
            }
        }
        if input_done {
            if !pending.is_empty() {
                let line = std::mem::take(&mut pending);
                if let Err(stop) = shell.handle_line(&String::from_utf8_lossy(&line)) {
                    break Err(stop);
                }
            }
            break shell.print_events();
        }
        let (input_ready, server_ready) = match wait_readable(stdin, &socket) {
            Ok(ready) => ready,
            Err(e) => {
                warn(format_args!("poll: {e}"));
                break Err(Stop::Failed);
            }
        };
        if server_ready {
            match shell.poll_events() {
                Ok(text) => {
                    if let Err(stop) = shell.print(&text) {
                        break Err(stop);
                    }
                }
                Err(lost) => {
                    let _ = shell.print(&lost.events);
                    if let Some(message) = lost.message {
                        warn(message);
                    }
                    break Err(lost.stop);
                }
            }
        }
        if input_ready {
            match rustix::io::read(stdin, &mut chunk) {
                Ok(0) => input_done = true,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => {
                    warn(format_args!("cannot read standard input: {e}"));
                    break Err(Stop::Failed);
                }
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(stop) => stop.code(),
    }
}

/// Blocks until standard input or the server has something (or hung up).
fn wait_readable(stdin: impl AsFd, socket: &OwnedFd) -> io::Result<(bool, bool)> {
    let ready = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
    loop {
        let mut fds = [
            PollFd::new(&stdin, PollFlags::IN),
            PollFd::new(socket, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {
                return Ok((
                    fds[0].revents().intersects(ready | PollFlags::NVAL),
                    fds[1].revents().intersects(ready),
                ));
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

// ---- standard input is a terminal ------------------------------------------------------------

/// The shell, shared between the line editor's thread and the thread that prints events
/// while the prompt is up.
struct Shared {
    shell: Mutex<Prompted>,
    at_prompt: Condvar,
}

struct Prompted {
    shell: Shell,
    /// The line editor is waiting for input: events print above the prompt.
    at_prompt: bool,
    /// Set when the connection is gone or the shell is leaving.
    stop: Option<Stop>,
}

fn interactive_loop(mut shell: Shell, args: &Args, throwaway: bool) -> ExitCode {
    let names = shell.completion();
    let config = Config::builder()
        .max_history_size(1024)
        .and_then(|c| c.history_ignore_dups(true))
        .map(|c| {
            c.auto_add_history(false)
                .completion_type(CompletionType::List)
                .build()
        });
    let editor = config.and_then(Editor::<Names, rustyline::history::DefaultHistory>::with_config);
    let mut editor = match editor {
        Ok(editor) => editor,
        Err(e) => {
            warn(format_args!("cannot set up the line editor: {e}"));
            return ExitCode::FAILURE;
        }
    };
    editor.set_helper(Some(Names {
        names,
        whole_line: args.hmp,
    }));
    let history =
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".qmp-shell-rs_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }

    let mut banner = format!(
        "Welcome to the {}!\nConnected to QEMU {}\n",
        if args.hmp {
            "HMP shell"
        } else {
            "QMP low-level shell"
        },
        shell.client.server().version
    );
    if throwaway {
        banner.push_str("(a throwaway qemu-system-x86_64 -machine none, stopped when you leave)\n");
    }
    if args.skip_negotiation {
        banner.push_str("Capabilities not negotiated: send qmp_capabilities first.\n");
    }
    banner.push('\n');
    if print_out(&banner).is_err() {
        return ExitCode::SUCCESS;
    }

    let socket = shell.client.stream().as_fd().try_clone_to_owned().ok();
    let shared = Arc::new(Shared {
        shell: Mutex::new(Prompted {
            shell,
            at_prompt: false,
            stop: None,
        }),
        at_prompt: Condvar::new(),
    });
    if let (Some(socket), Ok(printer)) = (socket, editor.create_external_printer()) {
        let shared = Arc::clone(&shared);
        let _ = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || print_events_at_prompt(&shared, &socket, printer));
    }

    let stop = loop {
        let prompt = {
            let mut state = lock(&shared.shell);
            if let Err(stop) = state.shell.print_events() {
                break stop;
            }
            if let Some(stop) = state.stop {
                break stop;
            }
            state.at_prompt = true;
            shared.at_prompt.notify_all();
            if state.shell.parser.in_transaction() {
                "TRANS> "
            } else {
                "(QEMU) "
            }
        };
        let line = editor.readline(prompt);
        // The terminal going away (SIGHUP) also ends `readline`: let the signal win.
        wait_if_exiting();
        let mut state = lock(&shared.shell);
        state.at_prompt = false;
        if let Some(stop) = state.stop {
            break stop;
        }
        match line {
            // A bracketed paste can bring several lines at once: each is a command.
            Ok(text) => {
                let mut stop = None;
                for line in text.lines() {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line);
                    }
                    if let Err(why) = state.shell.handle_line(line) {
                        stop = Some(why);
                        break;
                    }
                }
                if let Some(stop) = stop {
                    break stop;
                }
            }
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => {
                let _ = print_out("\n");
                break Stop::Done;
            }
            Err(e) => {
                warn(format_args!("{e}"));
                break Stop::Failed;
            }
        }
    };
    {
        let mut state = lock(&shared.shell);
        state.stop.get_or_insert(stop);
        shared.at_prompt.notify_all();
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    stop.code()
}

/// While the prompt is up, prints events above it as they arrive.
fn print_events_at_prompt(
    shared: &Shared,
    socket: &OwnedFd,
    mut printer: impl rustyline::ExternalPrinter,
) {
    loop {
        {
            let mut state = lock(&shared.shell);
            while !state.at_prompt && state.stop.is_none() {
                state = shared
                    .at_prompt
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if state.stop.is_some() {
                return;
            }
        }
        // Wait for the server without holding the lock, re-checking the prompt now and then.
        let mut fds = [PollFd::new(socket, PollFlags::IN)];
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        let (text, lost) = {
            let mut state = lock(&shared.shell);
            if !state.at_prompt {
                continue;
            }
            match state.shell.poll_events() {
                Ok(text) => (text, None),
                Err(lost) => {
                    state.stop = Some(lost.stop);
                    (lost.events, Some(lost.message))
                }
            }
        };
        // Printing can block until the editor reads it: not while holding the lock.
        if !text.is_empty() {
            let _ = printer.print(text);
        }
        if let Some(message) = lost {
            let why = message.map_or_else(String::new, |m| format!("{NAME}: {m}\n"));
            let _ = printer.print(format!("{why}{NAME}: press Enter to leave\n"));
            return;
        }
    }
}

/// Tab completion of command names (QMP), or of whole HMP command lines (`info status`).
struct Names {
    names: Arc<Mutex<Vec<String>>>,
    whole_line: bool,
}

impl Completer for Names {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let typed = &line[..pos];
        let start = typed.len() - typed.trim_start().len();
        let typed = &typed[start..];
        if !self.whole_line && typed.contains(char::is_whitespace) {
            return Ok((pos, Vec::new()));
        }
        let names = lock(&self.names);
        let matches = names
            .iter()
            .filter(|name| name.starts_with(typed))
            .cloned()
            .collect();
        Ok((start, matches))
    }
}

impl Hinter for Names {
    type Hint = String;
}

impl Highlighter for Names {}

impl Validator for Names {}

impl Helper for Names {}

#[cfg(test)]
mod tests {
    use super::*;
    use qmp_std::serde_json::json;

    #[track_caller]
    fn command(line: &str) -> (String, Value) {
        match LineParser::default().parse(line) {
            Ok(Input::Command { name, arguments }) => (name, Value::Object(arguments)),
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[track_caller]
    fn error(line: &str) -> String {
        match LineParser::default().parse(line) {
            Err(e) => e,
            other => panic!("{line:?} parsed: {other:?}"),
        }
    }

    #[test]
    fn key_value_lines() {
        assert_eq!(command("query-status"), ("query-status".into(), json!({})));
        assert_eq!(
            command("  qom-get path=/machine property=type "),
            (
                "qom-get".into(),
                json!({"path": "/machine", "property": "type"})
            )
        );
        assert_eq!(
            command(
                r#"x n=1 f=-2.5 t=true z=null s="a b \" c" q='x y' l=[1,"2"] o={"k":{}} e= w=a=b"#
            )
            .1,
            json!({"n": 1, "f": -2.5, "t": true, "z": null, "s": "a b \" c", "q": "x y",
                   "l": [1, "2"], "o": {"k": {}}, "e": "", "w": "a=b"})
        );
        // Not JSON: strings, as typed.
        assert_eq!(
            command("x a=007 b=True c=[1 d={x} e=/a/b f=-").1,
            json!({"a": "007", "b": "True", "c": "[1", "d": "{x}", "e": "/a/b", "f": "-"})
        );
    }

    #[test]
    fn dotted_keys_nest() {
        assert_eq!(
            command("blockdev-add driver=raw node-name=r0 file.driver=null-co file.size=1024 a.b.c=1 a.b.d=[]").1,
            json!({"driver": "raw", "node-name": "r0",
                   "file": {"driver": "null-co", "size": 1024},
                   "a": {"b": {"c": 1, "d": []}}})
        );
    }

    #[test]
    fn bad_lines() {
        assert!(error("x y").contains("KEY=VALUE"));
        assert!(error("x a=1 a=2").contains("set twice"));
        assert!(error("x a.b=1 a=2").contains("both"));
        assert!(error("x a=1 a.b=2").contains("both"));
        assert!(error("x .a=1").contains("bad key"));
        assert!(error("x a..b=1").contains("bad key"));
        assert!(error(r#"x a="b"#).contains("unterminated"));
        assert!(error("x a=don't").contains("unterminated"));
        assert_eq!(LineParser::default().parse("   "), Ok(Input::Nothing));
    }

    #[test]
    fn transactions() {
        let mut parser = LineParser::default();
        assert_eq!(parser.parse("transaction("), Ok(Input::Nothing));
        assert!(parser.in_transaction());
        assert_eq!(
            parser.parse("block-dirty-bitmap-add node=d0 name=b1"),
            Ok(Input::Nothing)
        );
        assert_eq!(parser.parse("abort"), Ok(Input::Nothing));
        let Ok(Input::Command { name, arguments }) = parser.parse(")") else {
            panic!("not finished");
        };
        assert!(!parser.in_transaction());
        assert_eq!(name, "transaction");
        assert_eq!(
            Value::Object(arguments),
            json!({"actions": [
                {"type": "block-dirty-bitmap-add", "data": {"node": "d0", "name": "b1"}},
                {"type": "abort", "data": {}}
            ]})
        );
        assert_eq!(
            command("transaction( abort )").1,
            json!({"actions": [{"type": "abort", "data": {}}]})
        );
        let mut parser = LineParser::default();
        parser.parse("transaction(").unwrap();
        assert!(parser.parse(") x").is_err());
    }

    #[test]
    fn arguments() {
        let parse = |args: &[&str]| Args::parse(args.iter().map(Into::into));
        let args = parse(&["-pv", "--hmp", "/tmp/s"]).unwrap().unwrap();
        assert!(args.pretty && args.verbose && args.hmp && !args.skip_negotiation);
        assert_eq!(args.address, Some(Address::Unix("/tmp/s".into())));
        let args = parse(&["-N", "--", "-odd"]).unwrap().unwrap();
        assert!(args.skip_negotiation);
        assert_eq!(args.address, Some(Address::Unix("-odd".into())));
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["-ph"]).unwrap().is_none());
        assert!(parse(&["-x"]).is_err());
        assert!(parse(&["--nope"]).is_err());
        assert!(parse(&["a", "b"]).is_err());
        assert!(parse(&["h:99999"]).is_err());
        assert!(parse(&[]).unwrap().unwrap().address.is_none());
    }

    #[test]
    fn usage_fits_a_terminal() {
        for line in USAGE.lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
    }
}
