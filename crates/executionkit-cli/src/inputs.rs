//! Inputs read from files before any request: `ek structured --schema FILE.json` and the items
//! of `ek map-reduce FILE…`. Every problem is an `invalid_argument` (exit 2).

use std::io::Read;
use std::path::Path;

use executionkit::Error;
use serde_json::Value;

/// A schema file: its name (the schema's `title`, else the file stem) and the schema.
///
/// # Errors
/// `invalid_argument` naming `schema` when the file cannot be read, is not JSON, or is neither
/// an object nor a boolean (whether it is valid JSON Schema is checked by the pattern).
pub fn read_schema(path: &Path) -> Result<(String, Value), Error> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::invalid_argument("schema", format!("cannot read --schema {shown}: {e}"))
    })?;
    let schema: Value = serde_json::from_str(&text).map_err(|e| {
        Error::invalid_argument("schema", format!("--schema {shown} is not valid JSON: {e}"))
    })?;
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(Error::invalid_argument(
            "schema",
            format!(
                "--schema {shown} must hold a JSON Schema (an object), got a JSON {}",
                kind(&schema)
            ),
        ));
    }
    let name = schema
        .get("title")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .map(str::to_owned)
        .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "output".to_owned());
    Ok((name, schema))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The items of `ek map-reduce`: each file whole (one trailing newline dropped), or with
/// `lines` each non-blank line (without its line ending). `-` is stdin, at most once.
///
/// # Errors
/// `invalid_argument` naming `files` when there is no file, `-` is given twice, a file cannot
/// be read or is not UTF-8, a whole-file item is blank, or `--lines` finds no line.
pub fn read_items(files: &[String], lines: bool) -> Result<Vec<String>, Error> {
    if files.is_empty() {
        return Err(Error::invalid_argument(
            "files",
            "map-reduce needs at least one FILE (each file is one item; `-` reads stdin; --lines makes each line an item)",
        ));
    }
    if files.iter().filter(|f| f.as_str() == "-").count() > 1 {
        return Err(Error::invalid_argument(
            "files",
            "`-` (stdin) may be given only once",
        ));
    }
    let mut items = Vec::new();
    for f in files {
        let text = read_file(f)?;
        if lines {
            items.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned),
            );
        } else {
            if text.trim().is_empty() {
                return Err(Error::invalid_argument(
                    "files",
                    format!("{} is empty (each FILE is one item)", shown(f)),
                ));
            }
            let item = text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text);
            items.push(item.to_owned());
        }
    }
    if items.is_empty() {
        return Err(Error::invalid_argument(
            "files",
            "--lines found no non-empty line in the given files",
        ));
    }
    Ok(items)
}

fn shown(f: &str) -> String {
    if f == "-" {
        "stdin".to_owned()
    } else {
        f.to_owned()
    }
}

fn read_file(f: &str) -> Result<String, Error> {
    let mut bytes = Vec::new();
    let read = if f == "-" {
        std::io::stdin().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(f).and_then(|mut file| file.read_to_end(&mut bytes).map(|_| ()))
    };
    read.map_err(|e| Error::invalid_argument("files", format!("cannot read {}: {e}", shown(f))))?;
    String::from_utf8(bytes)
        .map_err(|_| Error::invalid_argument("files", format!("{} is not UTF-8 text", shown(f))))
}

/// One line of a JSON Lines file of prompts (`ek consensus --inputs`, `ek eval`).
#[derive(Debug)]
pub struct PromptLine {
    /// The 1-based line number.
    pub line: usize,
    /// `id` (a string or a number), else the line number.
    pub id: Value,
    /// The non-empty `prompt`.
    pub prompt: String,
    /// The object's other keys.
    pub rest: serde_json::Map<String, Value>,
}

/// The lines of a JSON Lines file of prompts: each non-blank line one JSON object with a
/// non-empty string `prompt` and an optional `id` (a string or a number; default: the 1-based
/// line number), unique across the file; blank lines are skipped (they still count for line
/// numbers). `bad(line, what)` makes the error for a bad line; `example` is the object shown
/// when a line is not one.
///
/// # Errors
/// `bad`'s error for the first bad line.
pub fn prompt_lines(
    text: &str,
    example: &str,
    bad: &dyn Fn(usize, String) -> Error,
) -> Result<Vec<PromptLine>, Error> {
    let mut out = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(raw).map_err(|e| bad(line, format!("not valid JSON ({e})")))?;
        let Value::Object(mut rest) = v else {
            return Err(bad(line, format!("expected a JSON object like {example}")));
        };
        let prompt = match rest.remove("prompt") {
            Some(Value::String(p)) if !p.trim().is_empty() => p,
            Some(Value::String(_)) => return Err(bad(line, "\"prompt\" is empty".to_owned())),
            Some(_) => return Err(bad(line, "\"prompt\" must be a string".to_owned())),
            None => return Err(bad(line, "no \"prompt\"".to_owned())),
        };
        let id = match rest.remove("id") {
            None => Value::from(line),
            Some(id @ (Value::String(_) | Value::Number(_))) => id,
            Some(_) => return Err(bad(line, "\"id\" must be a string or a number".to_owned())),
        };
        if let Some(first) = seen.insert(id.to_string(), line) {
            return Err(bad(
                line,
                format!("id {id} was already used on line {first}"),
            ));
        }
        out.push(PromptLine {
            line,
            id,
            prompt,
            rest,
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp(name: &str, text: &[u8]) -> String {
        let dir = std::env::temp_dir().join(format!("ek-inputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn items_from_files_and_lines() {
        let a = temp("a.txt", b"first doc\n");
        let b = temp("b.txt", b"one\n\n  \r\ntwo\r\n");
        assert_eq!(
            read_items(&[a.clone(), b.clone()], false).unwrap(),
            vec!["first doc".to_owned(), "one\n\n  \r\ntwo".to_owned()]
        );
        assert_eq!(
            read_items(&[a, b], true).unwrap(),
            vec!["first doc", "one", "two"]
        );
    }

    #[test]
    fn bad_items() {
        let msg =
            |files: &[String], lines| read_items(files, lines).unwrap_err().message().to_owned();
        assert!(msg(&[], false).contains("at least one FILE"));
        assert!(msg(&["-".into(), "-".into()], false).contains("only once"));
        assert!(msg(&["/nonexistent/ek-x".into()], false).contains("cannot read"));
        let blank = temp("blank.txt", b" \n");
        assert!(msg(std::slice::from_ref(&blank), false).contains("empty"));
        assert!(msg(&[blank], true).contains("no non-empty line"));
        let bin = temp("bin.txt", &[0xff, 0xfe]);
        assert!(msg(&[bin], false).contains("UTF-8"));
    }

    #[test]
    fn schema_files() {
        let ok = temp("city.json", br#"{"type": "object"}"#);
        assert_eq!(read_schema(Path::new(&ok)).unwrap().0, "city");
        let titled = temp("t.json", br#"{"title": "Person", "type": "object"}"#);
        assert_eq!(read_schema(Path::new(&titled)).unwrap().0, "Person");
        let bad = temp("bad.json", b"{not json");
        assert!(
            read_schema(Path::new(&bad))
                .unwrap_err()
                .message()
                .contains("not valid JSON")
        );
        let num = temp("num.json", b"5");
        assert!(
            read_schema(Path::new(&num))
                .unwrap_err()
                .message()
                .contains("number")
        );
        assert!(
            read_schema(Path::new("/nonexistent/s.json"))
                .unwrap_err()
                .is_invalid_argument()
        );
    }
}
