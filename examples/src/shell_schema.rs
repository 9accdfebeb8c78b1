//! What the server's schema ([`qmp_std::Schema`]) gives `qmp-shell`: Tab completion of
//! argument names (dotted keys into nested objects and union branches) and of enum values in
//! `COMMAND KEY=VALUE ...` lines, and the text of `help COMMAND`.
//!
//! ```
//! use qmp_examples::shell_schema::complete;
//! # let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../qmp-proto/tests/data/query-qmp-schema.jsonl")).unwrap();
//! # let reply: qmp_std::serde_json::Value = qmp_std::serde_json::from_str(&text).unwrap();
//! let schema = qmp_std::Schema::from_json(&reply["return"])?;
//! let line = "blockdev-add driver=raw file.driver=null-co file.si";
//! assert_eq!(complete(&schema, line), Some((line.len() - 7, vec!["file.size=".to_owned()])));
//! # Ok::<(), qmp_std::SchemaError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use qmp_std::{Argument, Schema, SchemaError};

use crate::args::split_words_at;

/// Completes the word before the cursor in a `COMMAND KEY=VALUE ...` line (`typed`: the line
/// up to the cursor, past the command name): an argument name (`KEY=`, or `KEY.` for a
/// nested object), or after `KEY=` one of its enum values (`true`/`false` for a boolean).
/// Union branches that the line's own tag values rule out are left out, and so are keys
/// the line already sets. Returns where the completed text starts and the candidates;
/// `None` when there is nothing to complete (an unknown command, an open quote, a value
/// that is not an enum).
pub fn complete(schema: &Schema, typed: &str) -> Option<(usize, Vec<String>)> {
    let words = split_words_at(typed).ok()?;
    let (command, _) = words.first()?;
    if !schema.has_command(command) {
        return None;
    }
    let (word, start) = match words.last() {
        Some((word, start)) if words.len() > 1 && start + word.len() == typed.len() => {
            (word.as_str(), *start)
        }
        _ => ("", typed.len()),
    };
    let given: BTreeMap<&str, &str> = words[1..]
        .iter()
        .filter(|(_, at)| *at != start || word.is_empty())
        .filter_map(|(w, _)| w.split_once('='))
        .collect();
    let in_force = |a: &Argument| match &a.when {
        Some((tag, cases)) => given
            .get(tag.as_str())
            .is_none_or(|v| cases.iter().any(|c| c == v)),
        None => true,
    };
    let parent = |key: &str| key.rsplit_once('.').map_or("", |(p, _)| p).to_owned();
    let mut out: Vec<String> = Vec::new();
    let mut add = |candidate: String| {
        if !out.contains(&candidate) {
            out.push(candidate);
        }
    };
    if let Some((key, prefix)) = word.split_once('=') {
        for arg in schema.members_at(command, &parent(key))? {
            if arg.path != key || !in_force(&arg) {
                continue;
            }
            let values = if arg.type_name == "boolean" {
                vec!["false".to_owned(), "true".to_owned()]
            } else {
                arg.values
            };
            values
                .into_iter()
                .filter(|v| v.starts_with(prefix))
                .for_each(&mut add);
        }
        return (!out.is_empty()).then(|| (start + key.len() + 1, out));
    }
    for arg in schema.members_at(command, &parent(word))? {
        if !arg.path.starts_with(word) || given.contains_key(arg.path.as_str()) || !in_force(&arg) {
            continue;
        }
        let array = arg.type_name.starts_with("array");
        if !array && schema.members_at(command, &arg.path).is_some() {
            add(format!("{}.", arg.path));
        }
        if arg.type_name != "object" {
            add(format!("{}=", arg.path));
        }
    }
    Some((start, out))
}

/// The text of `help COMMAND`: its arguments with their types, marked when optional (nested
/// members indented under their object, by dotted path; union branches under the tag value
/// that selects them), then what it returns. `Err` for a command the server does not have
/// (with the nearest name, if one is near).
pub fn help(schema: &Schema, command: &str) -> Result<String, SchemaError> {
    let Some(arguments) = schema.arguments(command) else {
        return Err(schema
            .check(command, &qmp_std::serde_json::Value::Null)
            .expect_err("an unknown command fails the check"));
    };
    let mut text = String::new();
    if arguments.is_empty() {
        let _ = writeln!(text, "{command}: no arguments");
    } else {
        let _ = writeln!(text, "{command} arguments:");
        list(&mut text, &arguments);
    }
    let returns = schema.return_members(command).unwrap_or_default();
    let return_type = schema.return_type(command).unwrap_or_default();
    if returns.is_empty() && return_type == "object" {
        text.push_str("returns: nothing\n");
    } else {
        let each = if return_type.starts_with("array") && !returns.is_empty() {
            ", each with"
        } else {
            ""
        };
        let _ = writeln!(text, "returns: {return_type}{each}");
        list(&mut text, &returns);
    }
    Ok(text)
}

/// One line per member: `  PATH (optional): TYPE: VALUES`, indented by depth.
fn list(text: &mut String, members: &[Argument]) {
    let mut branch: Option<&(String, Vec<String>)> = None;
    for arg in members {
        let mut indent = 2 + 2 * arg.path.matches('.').count();
        if let Some(when) = &arg.when {
            if branch != Some(when) {
                let (tag, cases) = when;
                let depth = 2 + 2 * tag.matches('.').count();
                let _ = writeln!(text, "{:depth$}when {tag} is {}:", "", cases.join(", "));
            }
            indent += 2;
        }
        branch = arg.when.as_ref();
        let optional = if arg.optional { " (optional)" } else { "" };
        let _ = write!(
            text,
            "{:indent$}{}{optional}: {}",
            "", arg.path, arg.type_name
        );
        if !arg.values.is_empty() {
            let _ = write!(text, ": {}", arg.values.join(", "));
        }
        text.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 7.2's schema, as recorded by `query-qmp-schema` (in qmp-proto's test data).
    fn schema() -> &'static Schema {
        static SCHEMA: std::sync::OnceLock<Schema> = std::sync::OnceLock::new();
        SCHEMA.get_or_init(|| {
            let text = include_str!("../../qmp-proto/tests/data/query-qmp-schema.jsonl");
            let reply: qmp_std::serde_json::Value = qmp_std::serde_json::from_str(text).unwrap();
            Schema::from_json(&reply["return"]).unwrap()
        })
    }

    #[track_caller]
    fn candidates(line: &str) -> Vec<String> {
        let (start, out) = complete(schema(), line).unwrap_or_else(|| panic!("{line:?}"));
        let word = &line[start..];
        assert!(out.iter().all(|c| c.starts_with(word)), "{line:?}: {out:?}");
        out
    }

    #[test]
    fn argument_names() {
        assert_eq!(candidates("qom-get pa"), ["path="]);
        assert_eq!(
            candidates("qom-get "),
            ["path=", "property="],
            "every argument"
        );
        assert_eq!(candidates("qom-get path=/machine "), ["property="]);
        // An object and an alternate (object or string): `.` to go in, `=` for a value.
        assert_eq!(candidates("blockdev-add driver=raw cach"), ["cache."]);
        assert_eq!(
            candidates("blockdev-add driver=qcow2 cach"),
            ["cache.", "cache-size=", "cache-clean-interval="]
        );
        assert_eq!(
            candidates("blockdev-add driver=qcow2 fil"),
            ["file.", "file="]
        );
        // Union branches: only those of the driver given.
        assert_eq!(
            candidates("blockdev-add driver=raw file.driver=null-co file.si"),
            ["file.size="]
        );
        assert!(candidates("blockdev-add driver=raw file.").contains(&"file.filename=".into()));
        assert!(
            !candidates("blockdev-add driver=raw file.driver=null-co file.")
                .contains(&"file.filename=".into())
        );
        assert_eq!(candidates("blockdev-add driver=file filen"), ["filename="]);
        // Arrays take JSON values.
        assert_eq!(candidates("send-key ke"), ["keys="]);
        assert_eq!(candidates("query-status "), Vec::<String>::new());
    }

    #[test]
    fn enum_values() {
        assert_eq!(candidates("set-action reboot=sh"), ["shutdown"]);
        assert_eq!(candidates("blockdev-add driver=null-c"), ["null-co"]);
        let mut qcow = candidates("blockdev-add driver=raw file.driver=qco");
        qcow.sort();
        assert_eq!(qcow, ["qcow", "qcow2"]);
        assert_eq!(
            candidates("query-named-block-nodes flat="),
            ["false", "true"]
        );
        assert_eq!(
            complete(schema(), "qom-get path="),
            None,
            "a string: nothing to offer"
        );
    }

    #[test]
    fn nothing_to_complete() {
        assert_eq!(complete(schema(), "nope a"), None);
        assert_eq!(complete(schema(), "qom-get path='a b"), None);
        assert_eq!(complete(schema(), "blockdev-add nope.x"), None);
        assert_eq!(split_words_at("a 'b c' \"d\\\" e\"").unwrap().len(), 3);
    }

    #[test]
    fn help_text() {
        let text = help(schema(), "blockdev-add").unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "blockdev-add arguments:");
        assert!(
            lines[1].starts_with("  driver: enum: blkdebug, blklogwrites,"),
            "{text}"
        );
        assert!(lines.contains(&"  node-name (optional): string"), "{text}");
        assert!(lines.contains(&"  cache (optional): object"), "{text}");
        assert!(
            lines.contains(&"    cache.direct (optional): boolean"),
            "{text}"
        );
        assert!(
            lines.contains(&"  when driver is file, host_device, host_cdrom:")
                || lines.iter().any(|l| l.starts_with("  when driver is file")),
            "{text}"
        );
        assert!(lines.contains(&"    filename: string"), "{text}");
        assert_eq!(lines.last(), Some(&"returns: nothing"));

        let text = help(schema(), "query-status").unwrap();
        assert!(
            text.starts_with("query-status: no arguments\nreturns: object\n"),
            "{text}"
        );
        assert!(text.contains("\n  running: boolean\n"), "{text}");
        let text = help(schema(), "query-jobs").unwrap();
        assert!(
            text.contains("returns: array of object, each with\n  id: string\n"),
            "{text}"
        );
        assert_eq!(
            help(schema(), "blockdev-ad").unwrap_err().to_string(),
            "blockdev-ad: no such command (did you mean \"blockdev-add\"?)"
        );
    }
}
