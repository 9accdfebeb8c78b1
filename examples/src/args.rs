//! Command lines and `KEY=VALUE` command arguments, as `qmp-shell` and `qga` take them (QEMU's qmp-shell
//! syntax): values are JSON when they parse as JSON, else strings; dotted keys nest.

use qmp_std::serde_json::{self, Map, Value};

/// Splits a line at whitespace outside quotes; `"..."` (with backslash escapes) and `'...'`
/// keep their quotes, for [`parse_value`] to read.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    Ok(split_words_at(line)?
        .into_iter()
        .map(|(word, _)| word)
        .collect())
}

/// [`split_words`], each word with the byte offset where it starts in `line` (for
/// completion, which works on the word under the cursor).
pub fn split_words_at(line: &str) -> Result<Vec<(String, usize)>, String> {
    let mut words = Vec::new();
    let mut word: Option<(String, usize)> = None;
    let mut chars = line.char_indices();
    while let Some((at, c)) = chars.next() {
        if c.is_whitespace() {
            words.extend(word.take());
            continue;
        }
        let text = &mut word.get_or_insert_with(|| (String::new(), at)).0;
        text.push(c);
        if c == '"' || c == '\'' {
            loop {
                let Some((_, next)) = chars.next() else {
                    return Err(format!("unterminated {c}quote{c}"));
                };
                text.push(next);
                if next == c {
                    break;
                }
                if next == '\\'
                    && c == '"'
                    && let Some((_, escaped)) = chars.next()
                {
                    text.push(escaped);
                }
            }
        }
    }
    words.extend(word);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_their_quotes_and_where_they_start() {
        let line = r#"  blockdev-add  'node-name=a b' x="c \" d"y z "#;
        assert_eq!(
            split_words_at(line).unwrap(),
            [
                ("blockdev-add".to_owned(), 2),
                ("'node-name=a b'".to_owned(), 16),
                (r#"x="c \" d"y"#.to_owned(), 32),
                ("z".to_owned(), 44),
            ]
        );
        assert_eq!(
            split_words(line).unwrap(),
            ["blockdev-add", "'node-name=a b'", r#"x="c \" d"y"#, "z"]
        );
    }

    #[test]
    fn an_unclosed_quote_is_an_error() {
        assert_eq!(split_words("a 'b c").unwrap_err(), "unterminated 'quote'");
        assert!(split_words(r#"a "b \""#).is_err());
        assert_eq!(split_words("").unwrap(), Vec::<String>::new());
    }
}
