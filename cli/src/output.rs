//! How results are printed: JSON, buffered listings, sizes and short ids.

use serde_json::json;
use strata_core::CoreError;
use strata_core::layers::DiffRecord;
use strata_plugin_abi::KeyValues;

pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The exit status of a command that answered "no" (`layer exists` of a
/// missing layer, `check` that found something): 1. An error is
/// [`EXIT_ERROR`], so a script can tell the two apart.
pub(crate) const EXIT_NO: u8 = 1;
/// The exit status of a command that failed (bad configuration, a refused
/// input, a store error): 2, as for a usage error.
pub(crate) const EXIT_ERROR: u8 = 2;

/// What a write to standard output that failed means: a reader that went
/// away (`strata layer list | head -1`) ends the command quietly and
/// successfully, as it ends any line-printing tool; anything else is an
/// error.
fn stdout_failed(e: std::io::Error) -> CoreError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    CoreError::io("write", "standard output", e)
}

/// Writes formatted text and a newline to standard output; a closed pipe
/// ends the command quietly (see [`stdout_failed`]).
pub(crate) fn write_line(text: std::fmt::Arguments<'_>) -> Result<(), CoreError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(text)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(stdout_failed)
}

/// `println!` for the command's results: a closed pipe is not a panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))?
    };
}
pub(crate) use outln;

/// Prints `lines` through one buffer: a listing of thousands of lines in
/// one write, not one each.
pub(crate) fn print_lines(lines: impl IntoIterator<Item = String>) -> Result<(), CoreError> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in lines {
        writeln!(out, "{line}").map_err(stdout_failed)?;
    }
    out.flush().map_err(stdout_failed)
}

/// Prints the `fields` (comma-separated) of each object of `items`,
/// tab-separated, one item a line: strings as they are, lists joined with
/// commas, nothing as `-`. A field no item has is refused, naming those
/// there are.
pub(crate) fn print_fields(items: &[serde_json::Value], fields: &str) -> Result<(), CoreError> {
    let wanted: Vec<&str> = fields.split(',').map(str::trim).collect();
    let known: std::collections::BTreeSet<&str> = items
        .iter()
        .filter_map(|i| i.as_object())
        .flat_map(|o| o.keys().map(String::as_str))
        .collect();
    if let Some(unknown) = wanted
        .iter()
        .find(|w| w.is_empty() || (!items.is_empty() && !known.contains(**w)))
    {
        return Err(CoreError::InvalidInput(format!(
            "--format: no field '{unknown}' (the fields: {})",
            known.iter().copied().collect::<Vec<_>>().join(", ")
        )));
    }
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(list) => list
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    print_lines(items.iter().map(|item| {
        wanted
            .iter()
            .map(|field| text(&item[*field]))
            .collect::<Vec<_>>()
            .join("\t")
    }))
}

/// A list as the options ask: JSON objects for `--json`, the fields of
/// `--format`. Whether it printed: `false` when the table is wanted.
pub(crate) fn print_list(
    cli: &crate::Cli,
    items: impl FnOnce() -> Vec<serde_json::Value>,
) -> Result<bool, CoreError> {
    if let Some(fields) = &cli.format {
        print_fields(&items(), fields)?;
    } else if cli.json {
        print_json(serde_json::Value::Array(items()))?;
    } else {
        return Ok(false);
    }
    Ok(true)
}

pub(crate) fn print_json(value: serde_json::Value) -> Result<(), CoreError> {
    write_line(format_args!(
        "{}",
        serde_json::to_string_pretty(&value).expect("JSON values serialise")
    ))
}

pub(crate) fn diff_json(diff: DiffRecord) -> serde_json::Value {
    json!({
        "compressed_digest": diff.compressed_digest,
        "compressed_size": diff.compressed_size,
        "uncompressed_digest": diff.uncompressed_digest,
        "uncompressed_size": diff.uncompressed_size,
        "compression": diff.compression,
        "size": diff.size,
    })
}

/// `text` on one line for a table: newlines and tabs as spaces, cut to
/// `width` characters with an ellipsis.
pub(crate) fn one_line(text: &str, width: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > width {
        let cut: String = flat.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

pub(crate) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub(crate) fn key_values_json(values: &KeyValues) -> serde_json::Value {
    values
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Seconds since the epoch as UTC, `2026-11-28T20:40:00Z` (what podman and
/// ctr print, and what sorts as text).
pub(crate) fn utc(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Civil date from days since 1970-01-01 (the proleptic Gregorian
    // calendar, in 400-year eras).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_898_400), "2026-11-28T20:40:00Z");
    }
}
