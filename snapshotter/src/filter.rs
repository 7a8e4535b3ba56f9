//! containerd's filter language, for List: each filter is selectors joined
//! by `,` (all must hold); a snapshot is listed if any filter holds (no
//! filters: all are listed). A selector is a field path, optionally followed
//! by an operator and a value:
//!
//! ```text
//! kind==committed          parent!=""            name~=^default/
//! labels."containerd.io/gc.root"                 labels.team==storage
//! ```
//!
//! Field paths are `name`, `parent`, `kind` and `labels.<key>`; a part of a
//! path or a value may be quoted ("...", with `\"` and `\\` escapes). As in
//! containerd: a path alone asks that the field be present; `==` that it be
//! present and equal; `!=` that its value (empty when absent) differ; `~=`
//! that its value (empty when absent) match the regular expression.

use regex::Regex;

/// What a filter is checked against: one snapshot's fields.
pub trait Fields {
    /// The value at `path` (`["labels", key]`, `["kind"]`, ...), if present.
    /// As containerd's snapshot fields: a label is present when the key is
    /// there (even with an empty value); name and parent when not empty;
    /// kind always.
    fn field(&self, path: &[String]) -> Option<String>;
}

/// One parsed filter: selectors that must all hold.
#[derive(Debug)]
pub struct Filter {
    selectors: Vec<Selector>,
}

#[derive(Debug)]
struct Selector {
    path: Vec<String>,
    test: Test,
}

#[derive(Debug)]
enum Test {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

/// Parses every filter; the error names the filter and what is wrong.
pub fn parse_all(filters: &[String]) -> Result<Vec<Filter>, String> {
    filters
        .iter()
        .filter(|f| !f.trim().is_empty())
        .map(|f| parse(f).map_err(|why| format!("filter {f:?}: {why}")))
        .collect()
}

/// Whether `fields` passes: any filter holds, or there are none.
pub fn admits(filters: &[Filter], fields: &dyn Fields) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.holds(fields))
}

impl Filter {
    fn holds(&self, fields: &dyn Fields) -> bool {
        self.selectors.iter().all(|s| {
            let value = fields.field(&s.path);
            match &s.test {
                Test::Present => value.is_some(),
                Test::Equal(want) => value.as_deref() == Some(want.as_str()),
                Test::NotEqual(want) => value.as_deref().unwrap_or("") != want,
                Test::Matches(re) => re.is_match(value.as_deref().unwrap_or("")),
            }
        })
    }
}

fn parse(text: &str) -> Result<Filter, String> {
    let mut scanner = Scanner {
        chars: text.chars().collect(),
        at: 0,
    };
    let mut selectors = Vec::new();
    loop {
        scanner.skip_spaces();
        let path = scanner.path()?;
        scanner.skip_spaces();
        let test = match scanner.operator() {
            None => Test::Present,
            Some(op) => {
                scanner.skip_spaces();
                let value = scanner.value()?;
                match op {
                    "==" => Test::Equal(value),
                    "!=" => Test::NotEqual(value),
                    _ => Test::Matches(
                        Regex::new(&value).map_err(|e| format!("bad regular expression: {e}"))?,
                    ),
                }
            }
        };
        selectors.push(Selector { path, test });
        scanner.skip_spaces();
        match scanner.next() {
            None => break,
            Some(',') => continue,
            Some(c) => return Err(format!("unexpected {c:?} at {}", scanner.at - 1)),
        }
    }
    Ok(Filter { selectors })
}

struct Scanner {
    chars: Vec<char>,
    at: usize,
}

impl Scanner {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.at += usize::from(c.is_some());
        c
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn path(&mut self) -> Result<Vec<String>, String> {
        let mut parts = Vec::new();
        loop {
            let part = if self.peek() == Some('"') {
                self.quoted()?
            } else {
                let start = self.at;
                while self
                    .peek()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '/')
                {
                    self.at += 1;
                }
                self.chars[start..self.at].iter().collect()
            };
            if part.is_empty() {
                return Err(format!("expected a field name at {}", self.at));
            }
            parts.push(part);
            if self.peek() == Some('.') {
                self.at += 1;
            } else {
                return Ok(parts);
            }
        }
    }

    fn operator(&mut self) -> Option<&'static str> {
        let two: String = self.chars.iter().skip(self.at).take(2).collect();
        let op = match two.as_str() {
            "==" => "==",
            "!=" => "!=",
            "~=" => "~=",
            _ => return None,
        };
        self.at += 2;
        Some(op)
    }

    fn value(&mut self) -> Result<String, String> {
        if self.peek() == Some('"') {
            return self.quoted();
        }
        let start = self.at;
        while self.peek().is_some_and(|c| c != ',') {
            self.at += 1;
        }
        Ok(self.chars[start..self.at]
            .iter()
            .collect::<String>()
            .trim_end()
            .to_string())
    }

    fn quoted(&mut self) -> Result<String, String> {
        let start = self.at;
        self.at += 1;
        let mut out = String::new();
        loop {
            match self.next() {
                None => return Err(format!("unterminated quote from {start}")),
                Some('"') => return Ok(out),
                Some('\\') => match self.next() {
                    Some(c) => out.push(c),
                    None => return Err(format!("unterminated quote from {start}")),
                },
                Some(c) => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Snap(
        HashMap<&'static str, &'static str>,
        HashMap<&'static str, &'static str>,
    );

    impl Fields for Snap {
        fn field(&self, path: &[String]) -> Option<String> {
            match path {
                // Name and parent are present when not empty.
                [one] => self
                    .0
                    .get(one.as_str())
                    .filter(|v| !v.is_empty())
                    .map(|v| v.to_string()),
                [labels, key] if labels == "labels" => {
                    self.1.get(key.as_str()).map(|v| v.to_string())
                }
                _ => None,
            }
        }
    }

    fn snap() -> Snap {
        Snap(
            [
                ("name", "default/1/base"),
                ("kind", "committed"),
                ("parent", ""),
            ]
            .into(),
            [
                ("containerd.io/gc.root", "2026"),
                ("team", "storage"),
                ("empty", ""),
            ]
            .into(),
        )
    }

    fn admitted(filters: &[&str]) -> bool {
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        admits(&parse_all(&filters).unwrap(), &snap())
    }

    #[test]
    fn selectors_and_within_a_filter_and_filters_or() {
        assert!(admitted(&[]));
        assert!(admitted(&["kind==committed"]));
        assert!(!admitted(&["kind==active"]));
        assert!(admitted(&["kind==committed,labels.team==storage"]));
        assert!(!admitted(&["kind==committed,labels.team==other"]));
        assert!(admitted(&["kind==active", "labels.team==storage"]));
        assert!(admitted(&["kind!=view"]));
        assert!(admitted(&["name~=^default/[0-9]+/"]));
        assert!(!admitted(&["name~=^other"]));
    }

    #[test]
    fn quoted_label_keys_and_presence() {
        assert!(admitted(&[r#"labels."containerd.io/gc.root""#]));
        assert!(admitted(&[r#"labels."containerd.io/gc.root"==2026"#]));
        assert!(!admitted(&["labels.missing"]));
        // Present with an empty value, as containerd has it.
        assert!(admitted(&["labels.empty"]));
        assert!(admitted(&[r#"labels.empty=="""#]));
        // An empty parent is no parent: not present, equal to nothing.
        assert!(!admitted(&["parent"]));
        assert!(!admitted(&[r#"parent=="""#]));
        assert!(admitted(&["parent!=x"]));
        assert!(admitted(&["labels.missing~=^$"]));
        assert!(admitted(&[r#"name=="default/1/base""#]));
    }

    #[test]
    fn malformed_filters_are_refused_with_the_filter_named() {
        for bad in ["kind==\"open", "==x", "name~=(", "kind==a b,", "kind=a"] {
            let err = parse_all(&[bad.to_string()]).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
