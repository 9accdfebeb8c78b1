//! A fake QEMU for the shared and async clients' tests: a thread that answers each command
//! through a handler, as QEMU does (one at a time, in order).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::{self, JoinHandle};

use serde_json::{Value, json};

pub(crate) const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#;

/// What the handler can do for a command.
pub(crate) struct Server {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Events sent so far.
    pub(crate) events: u64,
}

impl Server {
    /// The next command, or `None` once the client closed its side.
    pub(crate) fn recv(&mut self) -> Option<Value> {
        loop {
            let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            match values.next() {
                Some(Ok(value)) => {
                    let used = values.byte_offset();
                    self.buf.drain(..used);
                    return Some(value);
                }
                Some(Err(e)) if !e.is_eof() => panic!("client sent bad JSON: {e}"),
                _ => {}
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub(crate) fn send(&mut self, text: &str) {
        let mut line = text.as_bytes().to_vec();
        line.extend_from_slice(b"\r\n");
        let _ = self.stream.write_all(&line);
    }

    pub(crate) fn reply(&mut self, command: &Value, value: Value) {
        self.send(&json!({"return": value, "id": command["id"]}).to_string());
    }

    pub(crate) fn event(&mut self, name: &str, data: Value) {
        self.events += 1;
        let event =
            json!({"timestamp": {"seconds": 1, "microseconds": 2}, "event": name, "data": data});
        self.send(&event.to_string());
    }

    /// Closes the connection.
    pub(crate) fn hang_up(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Starts a fake QEMU on `stream`: greeting, negotiation, then `handler` for each command
/// until the client goes away (or the handler returns `false`).
pub(crate) fn spawn(
    stream: UnixStream,
    mut handler: impl FnMut(&mut Server, &Value) -> bool + Send + 'static,
) -> JoinHandle<Server> {
    stream.set_nonblocking(false).unwrap();
    thread::spawn(move || {
        let mut server = Server {
            stream,
            buf: Vec::new(),
            events: 0,
        };
        server.send(GREETING);
        let caps = server.recv().expect("qmp_capabilities");
        assert_eq!(caps["execute"], "qmp_capabilities", "{caps}");
        server.reply(&caps, json!({}));
        while let Some(command) = server.recv() {
            if !handler(&mut server, &command) {
                break;
            }
        }
        server
    })
}

/// The default handler: `echo` returns its arguments; `emit` sends `arguments.n` `TICK`
/// events numbered from the server's count, then returns `{}`; `sleep` waits
/// `arguments.ms` milliseconds before its reply; `hang-up` closes the connection; anything
/// else returns `{}`.
pub(crate) fn echo(server: &mut Server, command: &Value) -> bool {
    let name = command
        .get("execute")
        .or_else(|| command.get("exec-oob"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let arguments = command.get("arguments").cloned().unwrap_or(json!({}));
    match name {
        "echo" => server.reply(command, arguments),
        "emit" => {
            for _ in 0..arguments["n"].as_u64().unwrap_or(1) {
                let seq = server.events;
                server.event("TICK", json!({"seq": seq}));
            }
            server.reply(command, json!({}));
        }
        "sleep" => {
            let ms = arguments["ms"].as_u64().unwrap_or(10);
            thread::sleep(std::time::Duration::from_millis(ms));
            server.reply(command, json!({}));
        }
        "hang-up" => {
            server.hang_up();
            return false;
        }
        _ => server.reply(command, json!({})),
    }
    true
}
