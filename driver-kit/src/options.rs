//! A driver's options (`[storage.options.<driver>]`, or per-layer storage
//! options): unknown keys are refused, so a typo is never silently ignored,
//! and every value is checked with an error naming the key.

use strata_plugin_abi::{DriverError, KeyValues, Result};

/// Options being read; built with the keys the driver knows.
pub struct DriverOptions<'a> {
    what: String,
    values: &'a KeyValues,
}

impl<'a> DriverOptions<'a> {
    /// Refuses keys not in `known`. `what` names the options in errors, e.g.
    /// "vfs driver option".
    pub fn new(what: impl Into<String>, values: &'a KeyValues, known: &[&str]) -> Result<Self> {
        let what = what.into();
        values.reject_unknown(&what, known)?;
        Ok(DriverOptions { what, values })
    }

    /// A value that must be one of `choices`; `default` when absent.
    pub fn choice(
        &self,
        key: &str,
        choices: &[&'static str],
        default: &'static str,
    ) -> Result<&'static str> {
        let Some(value) = self.values.get(key) else {
            return Ok(default);
        };
        choices
            .iter()
            .copied()
            .find(|c| *c == value)
            .ok_or_else(|| {
                DriverError::invalid_input(format!(
                    "{} '{key}' must be {}, not '{value}'",
                    self.what,
                    or_list(choices)
                ))
            })
    }

    /// A boolean (true/false, yes/no, 1/0); `default` when absent.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool> {
        Ok(self.values.get_bool(&self.what, key)?.unwrap_or(default))
    }

    /// A comma-separated list whose every item must be in `allowed`.
    pub fn list(&self, key: &str, allowed: &[&str], default: &'a str) -> Result<Vec<&'a str>> {
        let text = self.values.get(key).unwrap_or(default);
        let items: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect();
        if let Some(bad) = items.iter().find(|item| !allowed.contains(item)) {
            return Err(DriverError::invalid_input(format!(
                "{} '{key}': unknown value '{bad}' (known: {})",
                self.what,
                allowed.join(", ")
            )));
        }
        Ok(items)
    }
}

/// "a, b or c".
fn or_list(choices: &[&str]) -> String {
    match choices {
        [] => String::new(),
        [only] => (*only).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_plugin_abi::ErrorKind;

    fn values(pairs: &[(&str, &str)]) -> KeyValues {
        pairs.iter().copied().collect()
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let v = values(&[("reflnk", "auto")]);
        let err = DriverOptions::new("vfs driver option", &v, &["reflink"])
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("reflnk"), "{err}");

        let v = values(&[("reflink", "sometimes"), ("mountopt", "nodev,bogus")]);
        let options = DriverOptions::new("x option", &v, &["reflink", "mountopt"]).unwrap();
        let err = options
            .choice("reflink", &["auto", "always", "never"], "auto")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("'reflink' must be auto, always or never, not 'sometimes'"),
            "{err}"
        );
        let err = options
            .list("mountopt", &["nodev", "nosuid"], "")
            .unwrap_err();
        assert!(err.to_string().contains("unknown value 'bogus'"), "{err}");
    }

    #[test]
    fn defaults_apply_when_absent() {
        let v = KeyValues::new();
        let options = DriverOptions::new("x option", &v, &["a", "b", "c"]).unwrap();
        assert_eq!(options.choice("a", &["p", "q"], "q").unwrap(), "q");
        assert!(options.bool("b", true).unwrap());
        assert_eq!(
            options.list("c", &["nodev"], "nodev").unwrap(),
            vec!["nodev"]
        );
    }
}
