//! Command lines and `KEY=VALUE` command arguments, as `qmp-shell` and `qga` take them (QEMU's qmp-shell
//! syntax): values are JSON when they parse as JSON, else strings; dotted keys nest.

use qmp_std::serde_json::{self, Map, Value};

/// Splits a line at whitespace outside quotes; `"..."` (with backslash escapes) and `'...'`
/// keep their quotes, for [`parse_value`] to read.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
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
pub fn parse_pairs(pairs: &[String]) -> Result<Map<String, Value>, String> {
    let mut arguments = Map::new();
    for pair in pairs {
        if let Some(quote) = pair.chars().next().filter(|c| matches!(c, '\'' | '"'))
            && pair.len() > 1
            && pair.ends_with(quote)
            && let Some((key, value)) = pair[1..pair.len() - 1].split_once('=')
        {
            return Err(format!(
                "quotes go around the value, not the whole KEY=VALUE: write \
                 {key}={quote}{value}{quote}, not {pair}"
            ));
        }
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
pub fn parse_value(text: &str) -> Value {
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
