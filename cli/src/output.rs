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

/// Prints `lines` through one buffer: a listing of thousands of lines in
/// one write, not one each.
pub(crate) fn print_lines(lines: impl IntoIterator<Item = String>) -> Result<(), CoreError> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in lines {
        writeln!(out, "{line}").map_err(|e| CoreError::io("write", "standard output", e))?;
    }
    out.flush()
        .map_err(|e| CoreError::io("write", "standard output", e))
}

pub(crate) fn print_json(value: serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(&value).expect("JSON values serialise")
    );
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
