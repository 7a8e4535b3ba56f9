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
