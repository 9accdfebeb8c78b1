//! Schema coverage: walks QEMU 7.2's recorded `query-qmp-schema` and, for every command (its
//! arguments and its return), every event (its data) and every type, builds example JSON of the
//! exact shape the schema describes and round-trips it through the generated Rust type
//! (`qmp_qapi`): decoding must succeed and encoding must give back the same JSON. That
//! checks every member's name, its optionality (once with every optional member, once with
//! only the required ones, and that leaving out any one required member fails to decode)
//! and its JSON type, in every union branch and alternate member; an
//! enum's every value must decode as a known variant. A failure names the command or event,
//! which example, and the JSON path that differs.
//!
//! It runs without libtest (`harness = false`) so that its summary line,
//! `schema coverage: commands A/B, events C/D`, shows in plain `cargo test` output.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use qmp_qapi::__check::Check;
use qmp_qapi::check;
use serde_json::{Map, Value, json};

struct Schema {
    by: BTreeMap<String, Value>,
    order: Vec<Value>,
}

impl Schema {
    fn load() -> Schema {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../qmp-proto/tests/data/query-qmp-schema.jsonl"
        );
        let text = std::fs::read_to_string(path).expect("the recorded schema");
        let reply: Value = serde_json::from_str(&text).expect("JSON");
        let order = reply["return"].as_array().expect("an array").clone();
        let by = order
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
            .collect();
        Schema { by, order }
    }

    fn entity(&self, name: &str) -> &Value {
        &self.by[name]
    }

    fn is_empty_object(&self, name: &str) -> bool {
        let e = self.entity(name);
        e["meta-type"] == "object"
            && e["members"].as_array().unwrap().is_empty()
            && e.get("variants").is_none()
    }

    /// The most choices (union branches, alternate members) met below `name`.
    fn choices(&self, name: &str, seen: &mut BTreeSet<String>) -> usize {
        if !seen.insert(name.to_owned()) {
            return 1;
        }
        let e = self.entity(name);
        let mut most = 1;
        match e["meta-type"].as_str().unwrap() {
            "array" => most = self.choices(e["element-type"].as_str().unwrap(), seen),
            "object" => {
                for m in e["members"].as_array().unwrap() {
                    most = most.max(self.choices(m["type"].as_str().unwrap(), seen));
                }
                if let Some(variants) = e.get("variants").and_then(Value::as_array) {
                    most = most.max(variants.len());
                    for v in variants {
                        most = most.max(self.choices(v["type"].as_str().unwrap(), seen));
                    }
                }
            }
            "alternate" => {
                let members = e["members"].as_array().unwrap();
                most = most.max(members.len());
                for m in members {
                    most = most.max(self.choices(m["type"].as_str().unwrap(), seen));
                }
            }
            _ => {}
        }
        most
    }

    /// Example JSON of type `name`: choice `k` of each union and alternate, every optional
    /// member when `full` (near the top), only the required ones otherwise.
    fn example(&self, name: &str, k: usize, depth: usize, full: bool) -> Value {
        let e = self.entity(name);
        match e["meta-type"].as_str().unwrap() {
            "builtin" => match name {
                "str" => json!("text"),
                "int" => json!(42),
                "bool" => json!(true),
                "number" => json!(1.5),
                "null" => Value::Null,
                "any" => json!({"any": [1, "two"]}),
                other => panic!("builtin {other}"),
            },
            "array" => {
                if depth > 6 {
                    json!([])
                } else {
                    json!([self.example(e["element-type"].as_str().unwrap(), k, depth + 1, full)])
                }
            }
            "enum" => {
                let values = e["values"].as_array().unwrap();
                values[k % values.len()].clone()
            }
            "alternate" => {
                let members = e["members"].as_array().unwrap();
                let pick = if depth > 3 {
                    // Deep down, a scalar member ends recursion.
                    members
                        .iter()
                        .position(|m| {
                            self.entity(m["type"].as_str().unwrap())["meta-type"] == "builtin"
                        })
                        .unwrap_or(0)
                } else {
                    k % members.len()
                };
                self.example(members[pick]["type"].as_str().unwrap(), k, depth + 1, full)
            }
            "object" => {
                let mut out = Map::new();
                self.members(e, k, depth, full, &mut out);
                Value::Object(out)
            }
            other => panic!("meta-type {other}"),
        }
    }

    fn members(&self, e: &Value, k: usize, depth: usize, full: bool, out: &mut Map<String, Value>) {
        let with_optional = full && depth <= 3;
        for m in e["members"].as_array().unwrap() {
            if m.get("default").is_some() && !with_optional {
                continue;
            }
            let ty = m["type"].as_str().unwrap();
            out.insert(
                m["name"].as_str().unwrap().to_owned(),
                self.example(ty, k, depth + 1, full),
            );
        }
        if let Some(variants) = e.get("variants").and_then(Value::as_array) {
            let v = &variants[k % variants.len()];
            out.insert(e["tag"].as_str().unwrap().to_owned(), v["case"].clone());
            self.members(
                self.entity(v["type"].as_str().unwrap()),
                k,
                depth,
                full,
                out,
            );
        }
    }
}

/// The first JSON path where `got` differs from `want`.
fn diff(want: &Value, got: &Value, path: &str) -> Option<String> {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, va) in a {
                match b.get(key) {
                    None => {
                        return Some(format!("{path}.{key}: lost (the type has no such member)"));
                    }
                    Some(vb) => {
                        if let Some(d) = diff(va, vb, &format!("{path}.{key}")) {
                            return Some(d);
                        }
                    }
                }
            }
            b.keys()
                .find(|key| !a.contains_key(*key))
                .map(|key| format!("{path}.{key}: added (a member the schema does not have here)"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (va, vb))| diff(va, vb, &format!("{path}[{i}]"))),
        _ if want == got => None,
        _ => Some(format!("{path}: sent {want}, got back {got}")),
    }
}

/// Round-trips examples of `ty` through `check`; the failures, described.
fn check_type(
    schema: &Schema,
    ty: &str,
    check: Check,
    what: &str,
    failures: &mut Vec<String>,
) -> bool {
    let before = failures.len();
    if schema.is_empty_object(ty) && what.ends_with("arguments") {
        // A command without arguments is a unit struct, sent without `arguments`.
        if let Err(e) = check(Value::Null) {
            failures.push(format!("{what}: {e}"));
        }
        return failures.len() == before;
    }
    let choices = schema.choices(ty, &mut BTreeSet::new());
    for k in 0..choices {
        for full in [true, false] {
            let example = schema.example(ty, k, 0, full);
            let label = if full {
                "every member"
            } else {
                "required members"
            };
            match check(example.clone()) {
                Err(e) => failures.push(format!(
                    "{what} ({label}, choice {k}): does not decode: {e}\n    {example}"
                )),
                Ok(back) => {
                    if let Some(d) = diff(&example, &back, "$") {
                        failures.push(format!("{what} ({label}, choice {k}): {d}"));
                    }
                }
            }
            // Without any one of its required members, the object must not decode: a
            // member the schema requires is not an `Option` in Rust.
            if !full
                && schema.entity(ty)["meta-type"] == "object"
                && let Value::Object(members) = &example
            {
                for name in members.keys() {
                    let mut without = members.clone();
                    without.remove(name);
                    if check(Value::Object(without)).is_ok() {
                        failures.push(format!(
                            "{what} (choice {k}): decodes without its required member {name:?}"
                        ));
                    }
                }
            }
        }
    }
    failures.len() == before
}

fn main() -> ExitCode {
    let schema = Schema::load();
    let commands: BTreeMap<&str, (Check, Check)> = check::COMMANDS
        .iter()
        .map(|(n, a, r)| (*n, (*a, *r)))
        .collect();
    let events: BTreeMap<&str, Check> = check::EVENTS.iter().map(|(n, d)| (*n, *d)).collect();
    let mut failures = Vec::new();
    let (mut commands_ok, mut commands_all, mut events_ok, mut events_all) = (0, 0, 0, 0);
    for e in &schema.order {
        let name = e["name"].as_str().unwrap();
        match e["meta-type"].as_str().unwrap() {
            "command" => {
                commands_all += 1;
                let Some((args, ret)) = commands.get(name) else {
                    failures.push(format!("command {name}: no Rust type"));
                    continue;
                };
                let a = check_type(
                    &schema,
                    e["arg-type"].as_str().unwrap(),
                    *args,
                    &format!("command {name}: arguments"),
                    &mut failures,
                );
                let r = check_type(
                    &schema,
                    e["ret-type"].as_str().unwrap(),
                    *ret,
                    &format!("command {name}: return"),
                    &mut failures,
                );
                commands_ok += usize::from(a && r);
            }
            "event" => {
                events_all += 1;
                let Some(data) = events.get(name) else {
                    failures.push(format!("event {name}: no Rust type"));
                    continue;
                };
                let ty = e.get("arg-type").and_then(Value::as_str).unwrap_or("0");
                events_ok += usize::from(check_type(
                    &schema,
                    ty,
                    *data,
                    &format!("event {name}: data"),
                    &mut failures,
                ));
            }
            _ => {}
        }
    }
    // Every named type on its own, and every value of every enum.
    for (masked, rust, check) in check::TYPES {
        let e = schema.entity(masked);
        if e["meta-type"] == "enum" {
            for value in e["values"].as_array().unwrap() {
                match check(value.clone()) {
                    Ok(back) if &back == value => {}
                    Ok(back) => failures.push(format!("enum {rust}: {value} comes back as {back}")),
                    Err(err) => failures.push(format!("enum {rust}: {err}")),
                }
            }
        } else {
            check_type(
                &schema,
                masked,
                *check,
                &format!("type {rust}"),
                &mut failures,
            );
        }
    }
    for f in &failures {
        eprintln!("FAIL {f}");
    }
    println!(
        "schema coverage: commands {commands_ok}/{commands_all}, events {events_ok}/{events_all}"
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
