//! Log levels as numbers on the wire (0 = nothing, 1 error ... 5 trace).

use tracing::Level;
use tracing::level_filters::LevelFilter;

pub fn level_code(level: Level) -> u8 {
    match level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

pub fn filter_code(filter: LevelFilter) -> u8 {
    filter.into_level().map(level_code).unwrap_or(0)
}

/// The level a code stands for; codes above 5 (a newer, more verbose level) are
/// treated as trace.
pub fn level_from_code(code: u8) -> Option<Level> {
    match code {
        0 => None,
        1 => Some(Level::ERROR),
        2 => Some(Level::WARN),
        3 => Some(Level::INFO),
        4 => Some(Level::DEBUG),
        _ => Some(Level::TRACE),
    }
}
