//! The server's own description of its commands, from `query-qmp-schema`, to list them and
//! to check a command's arguments before sending it.
//!
//! [`Schema::fetch`] asks the server once (QEMU 7.2's answer is about 200 KB);
//! [`Schema::check`] then says, before anything is sent, where arguments go wrong: the path to
//! the bad member, what the schema expects there, and for a misspelt name or enum value the
//! nearest valid one. [`Schema::arguments`] lists what a command takes, nested members by
//! dotted path, with their types, whether they are optional, enum values and the union branch
//! they belong to, as `help COMMAND` in a shell needs.
//!
//! ```
//! use qmp_std::Schema;
//! use serde_json::json;
//!
//! # let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../qmp-proto/tests/data/query-qmp-schema.jsonl")).unwrap();
//! # let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
//! # let schema_json = &reply["return"];
//! // schema_json: the `return` of `query-qmp-schema`
//! let schema = Schema::from_json(schema_json)?;
//! let err = schema
//!     .check("blockdev-backup", &json!({"device": "d0", "target": "t0", "sync": "ful"}))
//!     .unwrap_err();
//! assert_eq!(err.to_string(), "blockdev-backup: sync: \"ful\" is not one of top, full, none, incremental, bitmap (did you mean \"full\"?)");
//! # Ok::<(), qmp_std::SchemaError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

/// Commands that take members their schema does not list (QAPI `gen: false`): `device_add`
/// takes the device's own properties next to `driver`, `id` and `bus`.
const OPEN_ARGUMENTS: &[&str] = &["device_add"];

/// How deep [`Schema::arguments`] lists nested members (unions nest without end:
/// `blockdev-add`'s `file` is itself a block node).
const LIST_DEPTH: usize = 3;

/// A parsed `query-qmp-schema`: every command, event and type the server knows.
#[derive(Debug, Clone)]
pub struct Schema {
    entities: BTreeMap<String, Entity>,
    commands: Vec<String>,
    events: Vec<String>,
}

#[derive(Debug, Clone)]
enum Entity {
    Builtin(String),
    Enum(Vec<String>),
    Array(String),
    Object {
        members: Vec<Member>,
        tag: Option<String>,
        variants: Vec<(String, String)>,
    },
    Alternate(Vec<String>),
    Command {
        arg: String,
        ret: String,
        allow_oob: bool,
    },
    Event {
        arg: Option<String>,
    },
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    ty: String,
    optional: bool,
}

/// One argument a command takes, as [`Schema::arguments`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argument {
    /// Its path: the member name, dotted for nested members (`file.filename`).
    pub path: String,
    /// Its type, for people: `string`, `int`, `boolean`, `number`, `value` (any JSON),
    /// `enum`, `object`, `array of …`, or alternatives joined by ` or `.
    pub type_name: String,
    /// Whether it may be left out.
    pub optional: bool,
    /// The values it takes, when it is an enum.
    pub values: Vec<String>,
    /// When it belongs to a union branch: the tag's path and the tag values that select it.
    pub when: Option<(String, Vec<String>)>,
}

/// What [`Schema::check`] found wrong, with where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// The command.
    pub command: String,
    /// The path to the bad member inside the arguments (`file.filename`, `keys[2].type`);
    /// empty for the arguments object itself.
    pub path: String,
    /// What is wrong.
    pub kind: SchemaErrorKind,
}

/// What is wrong, in a [`SchemaError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaErrorKind {
    /// The server has no such command.
    UnknownCommand {
        /// The nearest command name, if one is near.
        suggestion: Option<String>,
    },
    /// A member the schema does not have here.
    UnknownMember {
        /// The nearest valid member name, if one is near.
        suggestion: Option<String>,
    },
    /// A required member is missing.
    Missing,
    /// A value of the wrong JSON type.
    WrongType {
        /// What the schema expects (as in [`Argument::type_name`]).
        expected: String,
        /// The JSON type that came: `string`, `int`, `number`, `boolean`, `null`, `array`,
        /// `object`.
        got: &'static str,
    },
    /// A string that is not one of an enum's values (or of a union's tag values).
    NotInEnum {
        /// The value given.
        value: String,
        /// The values the schema has.
        expected: Vec<String>,
        /// The nearest of them, if one is near.
        suggestion: Option<String>,
    },
    /// The schema itself could not be read.
    Schema(String),
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |f: &mut fmt::Formatter<'_>| {
            if self.path.is_empty() {
                write!(f, "{}: ", self.command)
            } else {
                write!(f, "{}: {}: ", self.command, self.path)
            }
        };
        let suggest = |f: &mut fmt::Formatter<'_>, s: &Option<String>| match s {
            Some(s) => write!(f, " (did you mean \"{s}\"?)"),
            None => Ok(()),
        };
        match &self.kind {
            SchemaErrorKind::UnknownCommand { suggestion } => {
                write!(f, "{}: no such command", self.command)?;
                suggest(f, suggestion)
            }
            SchemaErrorKind::UnknownMember { suggestion } => {
                at(f)?;
                f.write_str("no such member")?;
                suggest(f, suggestion)
            }
            SchemaErrorKind::Missing => {
                at(f)?;
                f.write_str("missing (required)")
            }
            SchemaErrorKind::WrongType { expected, got } => {
                at(f)?;
                write!(f, "expected {expected}, got {got}")
            }
            SchemaErrorKind::NotInEnum {
                value,
                expected,
                suggestion,
            } => {
                at(f)?;
                write!(f, "\"{value}\" is not one of {}", expected.join(", "))?;
                suggest(f, suggestion)
            }
            SchemaErrorKind::Schema(why) => write!(f, "cannot read the schema: {why}"),
        }
    }
}

impl std::error::Error for SchemaError {}

/// The nearest of `candidates` to `word`, if it is near enough to be a misspelling.
fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        let distance = strsim::damerau_levenshtein(word, candidate);
        if best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    let limit = (word.chars().count() / 3).max(2);
    best.filter(|&(d, _)| d <= limit).map(|(_, c)| c.to_owned())
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn schema_error(why: impl Into<String>) -> SchemaError {
    SchemaError {
        command: "query-qmp-schema".into(),
        path: String::new(),
        kind: SchemaErrorKind::Schema(why.into()),
    }
}

fn join(path: &str, member: &str) -> String {
    if path.is_empty() {
        member.to_owned()
    } else {
        format!("{path}.{member}")
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Schema {
    /// Asks the server for its schema (`query-qmp-schema`) through a blocking client.
    pub fn fetch<S: crate::Stream>(client: &mut crate::Client<S>) -> crate::Result<Schema> {
        let value = client.execute_raw("query-qmp-schema", &Value::Null)?;
        Schema::from_json(&value).map_err(|e| {
            crate::Error::Decode(crate::DecodeError::new(
                <serde_json::Error as serde::de::Error>::custom(e),
                value.to_string(),
            ))
        })
    }

    /// Reads the `return` value of `query-qmp-schema` (an array of entities).
    pub fn from_json(value: &Value) -> Result<Schema, SchemaError> {
        let list = value
            .as_array()
            .ok_or_else(|| schema_error("not an array"))?;
        let mut schema = Schema {
            entities: BTreeMap::new(),
            commands: Vec::new(),
            events: Vec::new(),
        };
        for e in list {
            let name = e["name"]
                .as_str()
                .ok_or_else(|| schema_error("an entity without a name"))?
                .to_owned();
            let text = |key: &str| e[key].as_str().unwrap_or_default().to_owned();
            let entity = match e["meta-type"].as_str().unwrap_or_default() {
                "builtin" => Entity::Builtin(text("json-type")),
                "enum" => Entity::Enum(strings(&e["values"])),
                "array" => Entity::Array(text("element-type")),
                "alternate" => Entity::Alternate(
                    e["members"]
                        .as_array()
                        .map(|m| {
                            m.iter()
                                .map(|m| m["type"].as_str().unwrap_or_default().to_owned())
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
                "object" => Entity::Object {
                    members: e["members"]
                        .as_array()
                        .map(|m| {
                            m.iter()
                                .map(|m| Member {
                                    name: m["name"].as_str().unwrap_or_default().to_owned(),
                                    ty: m["type"].as_str().unwrap_or_default().to_owned(),
                                    optional: m.get("default").is_some(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    tag: e["tag"].as_str().map(str::to_owned),
                    variants: e["variants"]
                        .as_array()
                        .map(|v| {
                            v.iter()
                                .map(|v| {
                                    (
                                        v["case"].as_str().unwrap_or_default().to_owned(),
                                        v["type"].as_str().unwrap_or_default().to_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                },
                "command" => {
                    schema.commands.push(name.clone());
                    Entity::Command {
                        arg: text("arg-type"),
                        ret: text("ret-type"),
                        allow_oob: e["allow-oob"].as_bool().unwrap_or(false),
                    }
                }
                "event" => {
                    schema.events.push(name.clone());
                    Entity::Event {
                        arg: e["arg-type"].as_str().map(str::to_owned),
                    }
                }
                other => return Err(schema_error(format!("unknown meta-type {other:?}"))),
            };
            schema.entities.insert(name, entity);
        }
        schema.commands.sort();
        schema.events.sort();
        Ok(schema)
    }

    /// The command names, sorted.
    pub fn commands(&self) -> impl Iterator<Item = &str> {
        self.commands.iter().map(String::as_str)
    }

    /// The event names, sorted.
    pub fn events(&self) -> impl Iterator<Item = &str> {
        self.events.iter().map(String::as_str)
    }

    /// Whether the server has this command.
    pub fn has_command(&self, name: &str) -> bool {
        matches!(self.entities.get(name), Some(Entity::Command { .. }))
    }

    /// Whether QEMU allows this command out of band (`exec-oob`).
    pub fn allows_oob(&self, command: &str) -> bool {
        matches!(
            self.entities.get(command),
            Some(Entity::Command {
                allow_oob: true,
                ..
            })
        )
    }

    /// What a command returns, for people (as [`Argument::type_name`]).
    pub fn return_type(&self, command: &str) -> Option<String> {
        match self.entities.get(command)? {
            Entity::Command { ret, .. } => Some(self.type_name(ret)),
            _ => None,
        }
    }

    /// The arguments a command takes: every member, nested ones by dotted path (a few levels
    /// deep, never into a type that contains itself: see [`members_at`](Self::members_at)),
    /// union branches marked with the tag values that select them. `None` for an unknown
    /// command.
    pub fn arguments(&self, command: &str) -> Option<Vec<Argument>> {
        let Some(Entity::Command { arg, .. }) = self.entities.get(command) else {
            return None;
        };
        let mut out = Vec::new();
        self.list_members(arg, "", None, &mut vec![arg.as_str()], &mut out);
        Some(out)
    }

    /// The members one level under `path` (dotted, `""` for the top) in a command's
    /// arguments, union branches included, as a shell completes `file.` in `blockdev-add
    /// file.`: `file.driver`, `file.filename`, … `None` when the command or the path is
    /// unknown, or the path is not an object.
    pub fn members_at(&self, command: &str, path: &str) -> Option<Vec<Argument>> {
        let Some(Entity::Command { arg, .. }) = self.entities.get(command) else {
            return None;
        };
        let mut ty = arg.as_str();
        if !path.is_empty() {
            for part in path.split('.') {
                let all = self.all_members(ty);
                let member = all.iter().find(|m| m.name == part)?;
                ty = self.object_of(&member.ty)?;
            }
        }
        let mut out = Vec::new();
        // Every type counts as seen, so nothing below this level is listed.
        let mut seen: Vec<&str> = self.entities.keys().map(String::as_str).collect();
        self.list_members(ty, path, None, &mut seen, &mut out);
        Some(out)
    }

    /// An object's members with those of every branch of its union, recursively.
    fn all_members(&self, ty: &str) -> Vec<&Member> {
        let mut out = Vec::new();
        if let Some(Entity::Object {
            members, variants, ..
        }) = self.entities.get(ty)
        {
            out.extend(members);
            for (_, branch) in variants {
                out.extend(self.all_members(branch));
            }
        }
        out
    }

    /// The members of an event's data, as [`arguments`](Self::arguments) lists them.
    pub fn event_data(&self, event: &str) -> Option<Vec<Argument>> {
        let Some(Entity::Event { arg }) = self.entities.get(event) else {
            return None;
        };
        let mut out = Vec::new();
        if let Some(arg) = arg {
            self.list_members(arg, "", None, &mut vec![arg.as_str()], &mut out);
        }
        Some(out)
    }

    /// The members of what a command returns (of each element, when it returns an array of
    /// objects), as [`arguments`](Self::arguments) lists them; empty when it returns no
    /// object or an empty one (`{}`). `None` for an unknown command.
    pub fn return_members(&self, command: &str) -> Option<Vec<Argument>> {
        let Some(Entity::Command { ret, .. }) = self.entities.get(command) else {
            return None;
        };
        let mut out = Vec::new();
        if let Some(object) = self.object_of(ret) {
            self.list_members(object, "", None, &mut vec![object], &mut out);
        }
        Some(out)
    }

    fn list_members<'a>(
        &'a self,
        ty: &str,
        path: &str,
        when: Option<&(String, Vec<String>)>,
        seen: &mut Vec<&'a str>,
        out: &mut Vec<Argument>,
    ) {
        let Some(Entity::Object {
            members,
            tag,
            variants,
        }) = self.entities.get(ty)
        else {
            return;
        };
        for m in members {
            let member_path = join(path, &m.name);
            out.push(Argument {
                path: member_path.clone(),
                type_name: self.type_name(&m.ty),
                optional: m.optional,
                values: self.enum_values(&m.ty),
                when: when.cloned(),
            });
            if let Some(object) = self.object_of(&m.ty)
                && seen.len() <= LIST_DEPTH
                && !seen.contains(&object)
            {
                seen.push(object);
                self.list_members(object, &member_path, when, seen, out);
                seen.pop();
            }
        }
        if let Some(tag) = tag {
            // Branches sharing a type are listed once, with every tag value that selects it.
            let mut by_type: Vec<(&str, Vec<String>)> = Vec::new();
            for (case, branch) in variants {
                match by_type.iter_mut().find(|(t, _)| t == branch) {
                    Some((_, cases)) => cases.push(case.clone()),
                    None => by_type.push((branch, vec![case.clone()])),
                }
            }
            for (branch, cases) in by_type {
                let when = (join(path, tag), cases);
                self.list_members(branch, path, Some(&when), seen, out);
            }
        }
    }

    /// The object type a member of type `ty` nests (directly, or as an alternate's object).
    fn object_of<'a>(&'a self, ty: &'a str) -> Option<&'a str> {
        let ty = match self.entities.get(ty)? {
            Entity::Array(element) => element.as_str(),
            _ => ty,
        };
        match self.entities.get(ty)? {
            Entity::Object { .. } => Some(ty),
            Entity::Alternate(members) => members
                .iter()
                .find(|m| matches!(self.entities.get(m.as_str()), Some(Entity::Object { .. })))
                .map(String::as_str),
            _ => None,
        }
    }

    fn enum_values(&self, ty: &str) -> Vec<String> {
        match self.entities.get(ty) {
            Some(Entity::Enum(values)) => values.clone(),
            _ => Vec::new(),
        }
    }

    fn type_name(&self, ty: &str) -> String {
        match self.entities.get(ty) {
            Some(Entity::Builtin(json)) => match json.as_str() {
                "value" => "value".to_owned(),
                other => other.to_owned(),
            },
            Some(Entity::Enum(_)) => "enum".to_owned(),
            Some(Entity::Array(element)) => format!("array of {}", self.type_name(element)),
            Some(Entity::Object { .. }) => "object".to_owned(),
            Some(Entity::Alternate(members)) => members
                .iter()
                .map(|m| self.type_name(m))
                .collect::<Vec<_>>()
                .join(" or "),
            _ => ty.to_owned(),
        }
    }

    /// Checks a command's arguments (an object, or `null` / absent for none) against the
    /// schema, before sending: the first problem found, with its path.
    pub fn check(&self, command: &str, arguments: &Value) -> Result<(), SchemaError> {
        let fail = |path: String, kind| SchemaError {
            command: command.to_owned(),
            path,
            kind,
        };
        let Some(Entity::Command { arg, .. }) = self.entities.get(command) else {
            let suggestion = nearest(command, self.commands());
            return Err(fail(
                String::new(),
                SchemaErrorKind::UnknownCommand { suggestion },
            ));
        };
        let empty = Value::Object(Map::new());
        let arguments = if arguments.is_null() {
            &empty
        } else {
            arguments
        };
        let open = OPEN_ARGUMENTS.contains(&command);
        self.check_value(arg, arguments, "", open)
            .map_err(|(path, kind)| fail(path, kind))
    }

    fn check_value(
        &self,
        ty: &str,
        value: &Value,
        path: &str,
        open: bool,
    ) -> Result<(), (String, SchemaErrorKind)> {
        let wrong = |expected: String| {
            Err((
                path.to_owned(),
                SchemaErrorKind::WrongType {
                    expected,
                    got: json_kind(value),
                },
            ))
        };
        let Some(entity) = self.entities.get(ty) else {
            return Ok(()); // A type the schema does not define: nothing to check against.
        };
        match entity {
            Entity::Builtin(json) => {
                let ok = match json.as_str() {
                    "string" => value.is_string(),
                    "int" => value.is_i64() || value.is_u64(),
                    "number" => value.is_number(),
                    "boolean" => value.is_boolean(),
                    "null" => value.is_null(),
                    _ => true,
                };
                if ok {
                    Ok(())
                } else {
                    wrong(self.type_name(ty))
                }
            }
            Entity::Enum(values) => {
                let Some(s) = value.as_str() else {
                    return wrong("enum (a string)".to_owned());
                };
                if values.iter().any(|v| v == s) {
                    return Ok(());
                }
                Err((
                    path.to_owned(),
                    SchemaErrorKind::NotInEnum {
                        value: s.to_owned(),
                        expected: values.clone(),
                        suggestion: nearest(s, values.iter().map(String::as_str)),
                    },
                ))
            }
            Entity::Array(element) => {
                let Some(items) = value.as_array() else {
                    return wrong(self.type_name(ty));
                };
                for (i, item) in items.iter().enumerate() {
                    self.check_value(element, item, &format!("{path}[{i}]"), false)?;
                }
                Ok(())
            }
            Entity::Alternate(members) => {
                // QEMU picks the alternative by the value's JSON type.
                let kind = json_kind(value);
                let fits = |m: &String| match self.entities.get(m.as_str()) {
                    Some(Entity::Builtin(json)) => {
                        json == "value" || json == kind || (json == "number" && kind == "int")
                    }
                    Some(Entity::Enum(_)) => kind == "string",
                    Some(Entity::Array(_)) => kind == "array",
                    Some(Entity::Object { .. }) => kind == "object",
                    _ => false,
                };
                match members.iter().find(|m| fits(m)) {
                    Some(member) => self.check_value(member, value, path, false),
                    None => wrong(self.type_name(ty)),
                }
            }
            Entity::Object { .. } => {
                let Some(object) = value.as_object() else {
                    return wrong("object".to_owned());
                };
                self.check_object(ty, object, path, open)
            }
            Entity::Command { .. } | Entity::Event { .. } => Ok(()),
        }
    }

    fn check_object(
        &self,
        ty: &str,
        object: &Map<String, Value>,
        path: &str,
        open: bool,
    ) -> Result<(), (String, SchemaErrorKind)> {
        // The members in force: the object's own, plus those of the union branch its tag
        // selects.
        let mut members: Vec<&Member> = Vec::new();
        let mut current = ty;
        while let Some(Entity::Object {
            members: own,
            tag,
            variants,
        }) = self.entities.get(current)
        {
            members.extend(own);
            let Some(tag) = tag else { break };
            let Some(tag_value) = object.get(tag).and_then(Value::as_str) else {
                break; // Reported below: missing, or not a string.
            };
            match variants.iter().find(|(case, _)| case == tag_value) {
                Some((_, branch)) => current = branch,
                None => {
                    let cases: Vec<String> = variants.iter().map(|(c, _)| c.clone()).collect();
                    let suggestion = nearest(tag_value, cases.iter().map(String::as_str));
                    return Err((
                        join(path, tag),
                        SchemaErrorKind::NotInEnum {
                            value: tag_value.to_owned(),
                            expected: cases,
                            suggestion,
                        },
                    ));
                }
            }
        }
        let known: BTreeSet<&str> = members.iter().map(|m| m.name.as_str()).collect();
        if !open {
            for name in object.keys() {
                if !known.contains(name.as_str()) {
                    return Err((
                        join(path, name),
                        SchemaErrorKind::UnknownMember {
                            suggestion: nearest(name, known.iter().copied()),
                        },
                    ));
                }
            }
        }
        for m in &members {
            match object.get(&m.name) {
                None if !m.optional => {
                    return Err((join(path, &m.name), SchemaErrorKind::Missing));
                }
                None => {}
                Some(v) => self.check_value(&m.ty, v, &join(path, &m.name), false)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// QEMU 7.2's schema, as recorded (parsed once for all the tests).
    fn schema() -> &'static Schema {
        static SCHEMA: std::sync::OnceLock<Schema> = std::sync::OnceLock::new();
        SCHEMA.get_or_init(|| {
            let text = include_str!("../../qmp-proto/tests/data/query-qmp-schema.jsonl");
            let reply: Value = serde_json::from_str(text).unwrap();
            Schema::from_json(&reply["return"]).unwrap()
        })
    }

    #[track_caller]
    fn fails(schema: &Schema, command: &str, args: Value, message: &str) -> SchemaError {
        let err = schema.check(command, &args).unwrap_err();
        assert_eq!(err.to_string(), message);
        err
    }

    #[test]
    fn lists_commands_and_events() {
        let s = schema();
        assert_eq!(s.commands().count(), 216);
        assert_eq!(s.events().count(), 52);
        assert!(s.has_command("blockdev-backup") && !s.has_command("JOB_STATUS_CHANGE"));
        assert!(s.events().any(|e| e == "JOB_STATUS_CHANGE"));
        let oob: Vec<&str> = s.commands().filter(|c| s.allows_oob(c)).collect();
        assert_eq!(
            oob,
            ["migrate-pause", "migrate-recover", "query-yank", "yank"]
        );
        assert_eq!(
            s.return_type("query-jobs").as_deref(),
            Some("array of object")
        );
        assert_eq!(s.return_type("qom-get").as_deref(), Some("value"));
    }

    #[test]
    fn good_arguments_pass() {
        let s = schema();
        s.check("query-status", &Value::Null).unwrap();
        s.check("query-status", &json!({})).unwrap();
        s.check(
            "blockdev-backup",
            &json!({"device": "d", "target": "t", "sync": "full", "job-id": "j", "speed": 0}),
        )
        .unwrap();
        s.check("blockdev-add", &json!({"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "/x"}})).unwrap();
        s.check(
            "blockdev-add",
            &json!({"driver": "qcow2", "node-name": "n", "file": "other-node", "backing": null}),
        )
        .unwrap();
        s.check("device_add", &json!({"driver": "virtio-net-pci", "id": "n0", "netdev": "u0", "mac": "52:54:00:12:34:56"})).unwrap();
        s.check(
            "netdev_add",
            &json!({"type": "user", "id": "u0", "hostfwd": [{"str": "tcp::2222-:22"}]}),
        )
        .unwrap();
        s.check(
            "migrate-set-capabilities",
            &json!({"capabilities": [{"capability": "events", "state": true}]}),
        )
        .unwrap();
        s.check(
            "qom-set",
            &json!({"path": "/machine", "property": "x", "value": [1, {"a": null}]}),
        )
        .unwrap();
    }

    #[test]
    fn errors_say_where_and_what() {
        let s = schema();
        let e = fails(
            s,
            "blockdev-bakup",
            json!({}),
            "blockdev-bakup: no such command (did you mean \"blockdev-backup\"?)",
        );
        assert_eq!(
            e.kind,
            SchemaErrorKind::UnknownCommand {
                suggestion: Some("blockdev-backup".into())
            }
        );
        let e = fails(
            s,
            "blockdev-backup",
            json!({"device": "d", "target": "t", "sync": "full", "jobid": "j"}),
            "blockdev-backup: jobid: no such member (did you mean \"job-id\"?)",
        );
        assert_eq!(e.path, "jobid");
        fails(
            s,
            "blockdev-backup",
            json!({"device": "d", "sync": "full"}),
            "blockdev-backup: target: missing (required)",
        );
        fails(
            s,
            "blockdev-backup",
            json!({"device": "d", "target": "t", "sync": "full", "speed": "fast"}),
            "blockdev-backup: speed: expected int, got string",
        );
        fails(
            s,
            "blockdev-backup",
            json!({"device": "d", "target": "t", "sync": "ful"}),
            "blockdev-backup: sync: \"ful\" is not one of top, full, none, incremental, bitmap (did you mean \"full\"?)",
        );
        // Nested, through an alternate, into a union branch.
        fails(
            s,
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filenme": "/x"}}),
            "blockdev-add: file.filenme: no such member (did you mean \"filename\"?)",
        );
        fails(
            s,
            "blockdev-add",
            json!({"driver": "qcow", "node-name": "n", "file": "f", "cache": {"direct": "yes"}}),
            "blockdev-add: cache.direct: expected boolean, got string",
        );
        let e = fails(
            s,
            "blockdev-add",
            json!({"driver": "qcow3", "file": "f"}),
            "blockdev-add: driver: \"qcow3\" is not one of blkdebug, blklogwrites, blkverify, blkreplay, bochs, cloop, compress, copy-before-write, copy-on-read, dmg, file, ftp, ftps, gluster, host_cdrom, host_device, http, https, iscsi, luks, nbd, nfs, null-aio, null-co, nvme, parallels, preallocate, qcow2, qcow, qed, quorum, raw, rbd, replication, snapshot-access, ssh, throttle, vdi, vhdx, vmdk, vpc, vvfat (did you mean \"qcow2\"?)",
        );
        assert_eq!(e.path, "driver");
        fails(
            s,
            "blockdev-add",
            json!({"driver": "qcow2", "file": 5}),
            "blockdev-add: file: expected object or string, got int",
        );
        fails(
            s,
            "send-key",
            json!({"keys": [{"type": "qcode", "data": "a"}, {"type": "number", "data": "x"}]}),
            "send-key: keys[1].data: expected int, got string",
        );
        fails(
            s,
            "query-status",
            json!({"verbose": true}),
            "query-status: verbose: no such member",
        );
        fails(
            s,
            "blockdev-backup",
            json!([1]),
            "blockdev-backup: expected object, got array",
        );
        // device_add takes the device's properties, but checks the members it lists.
        fails(
            s,
            "device_add",
            json!({"driver": 5}),
            "device_add: driver: expected string, got int",
        );
    }

    #[test]
    fn arguments_for_help() {
        let s = schema();
        let args = s.arguments("blockdev-backup").unwrap();
        let sync = args.iter().find(|a| a.path == "sync").unwrap();
        assert_eq!((sync.type_name.as_str(), sync.optional), ("enum", false));
        assert_eq!(
            sync.values,
            ["top", "full", "none", "incremental", "bitmap"]
        );
        let job = args.iter().find(|a| a.path == "job-id").unwrap();
        assert_eq!((job.type_name.as_str(), job.optional), ("string", true));

        let add = s.arguments("blockdev-add").unwrap();
        let filename = add.iter().find(|a| a.path == "filename").unwrap();
        let (tag, cases) = filename.when.as_ref().unwrap();
        assert_eq!(tag, "driver");
        assert!(cases.contains(&"file".to_owned()) && cases.contains(&"host_device".to_owned()));
        assert!(
            add.iter()
                .any(|a| a.path == "cache.direct" && a.type_name == "boolean")
        );
        // `file` is itself a block node: its members are listed on demand, through the
        // alternate, union branches included.
        assert!(!add.iter().any(|a| a.path.starts_with("file.")));
        let file = s.members_at("blockdev-add", "file").unwrap();
        assert!(file.iter().any(|a| a.path == "file.filename"), "{file:#?}");
        assert!(
            file.iter()
                .any(|a| a.path == "file.driver" && a.values.len() == 42)
        );
        let deeper = s.members_at("blockdev-add", "file.file").unwrap();
        assert!(deeper.iter().any(|a| a.path == "file.file.node-name"));
        assert!(s.members_at("blockdev-add", "file.nope").is_none());
        // Array elements: `send-key keys.` lists a key's members.
        let keys = s.members_at("send-key", "keys").unwrap();
        assert!(keys.iter().any(|a| a.path == "keys.type"), "{keys:#?}");
        assert!(add.len() < 1000, "{}", add.len());
        assert_eq!(s.arguments("query-status").unwrap(), []);
        let status = s.return_members("query-status").unwrap();
        assert!(
            status
                .iter()
                .any(|a| a.path == "status" && a.type_name == "enum")
        );
        assert_eq!(s.return_members("blockdev-add").unwrap(), []);
        let jobs = s.return_members("query-jobs").unwrap();
        assert!(jobs.iter().any(|a| a.path == "id"), "{jobs:#?}");
        assert!(s.return_members("nope").is_none());
        assert!(s.arguments("nope").is_none());
        let data = s.event_data("JOB_STATUS_CHANGE").unwrap();
        assert_eq!(
            data.iter().map(|a| a.path.as_str()).collect::<Vec<_>>(),
            ["id", "status"]
        );
    }
}
