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

    /// A value taken as it is, if given.
    pub fn text(&self, key: &str) -> Option<&'a str> {
        self.values.get(key)
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

    /// A size in bytes: a number with an optional binary unit (`k`, `m`,
    /// `g`, `t`, any case, optionally followed by `b` or `ib`: "20M",
    /// "1GiB", "4096"), as `docker run --storage-opt size=` reads it;
    /// `None` when absent. Zero and values past 2^64 are refused.
    pub fn size(&self, key: &str) -> Result<Option<u64>> {
        let Some(text) = self.values.get(key) else {
            return Ok(None);
        };
        parse_size(text).map(Some).ok_or_else(|| {
            DriverError::invalid_input(format!(
                "{} '{key}' must be a size such as 10G, 512M or 1048576, not '{text}'",
                self.what
            ))
        })
    }
}

/// "20M" as 20 MiB; see [`DriverOptions::size`].
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    let bytes = number.checked_mul(1u64 << shift)?;
    (bytes > 0).then_some(bytes)
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

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("20M"), Some(20 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("2gb"), Some(2 << 30));
        for bad in ["", "0", "M", "1X", "-1", "99999999999T", "1.5G"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
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
