//! Which names a Windows layer may hold. Every member lives under one of
//! [`WINDOWS_LAYER_ROOTS`]; a name that could reach elsewhere, or that
//! Windows cannot hold, is refused before anything is written.

use crate::FormatError;

/// The top directories of a Windows layer: the container's files, its
/// registry deltas, and the utility VM.
pub const WINDOWS_LAYER_ROOTS: [&str; 3] = ["Files", "Hives", "UtilityVM"];

/// Characters no Windows file name holds (`:` is an alternate data
/// stream's separator, split off before names are checked).
const FORBIDDEN: &[char] = &['<', '>', ':', '"', '|', '?', '*', '\\'];

/// Checks a member name (slash-separated, as the tar gives it; a trailing
/// slash dropped) and returns it without that slash.
pub fn check_path(name: &str) -> Result<&str, FormatError> {
    let path = name.strip_suffix('/').unwrap_or(name);
    let refuse = |why: &str| Err(FormatError::refused(name, why));
    if path.is_empty() {
        return refuse("an empty name");
    }
    if path.starts_with('/') {
        return refuse("an absolute name");
    }
    for component in path.split('/') {
        match component {
            "" => return refuse("an empty path component"),
            "." | ".." => {
                return refuse("a '.' or '..' component, which could reach outside the layer");
            }
            c if c.chars().any(|ch| FORBIDDEN.contains(&ch) || ch < ' ') => {
                return refuse(
                    "a character Windows file names cannot hold (one of <>:\"|?*\\ or a control character)",
                );
            }
            c if c.ends_with(' ') || c.ends_with('.') => {
                return refuse("a component ending in a space or a dot, which Windows drops");
            }
            _ => {}
        }
    }
    let mut components = path.split('/');
    let top = components.next().unwrap_or_default();
    if !WINDOWS_LAYER_ROOTS.contains(&top) {
        return refuse("outside Files/, Hives/ and UtilityVM/");
    }
    if top == "UtilityVM"
        && let Some(second) = components.next()
        && second != "Files"
    {
        return refuse("under UtilityVM/ but not UtilityVM/Files/");
    }
    Ok(path)
}

/// Checks an alternate data stream's name (without `:` and `:$DATA`):
/// what both directions accept, so neither writes what the other refuses.
pub(crate) fn check_stream_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.contains([':', '/', '\\']) || name.chars().any(|c| c < ' ') {
        return Err(
            "an alternate data stream name that is empty or holds ':', a slash or a control character",
        );
    }
    if name.encode_utf16().count() > 255 {
        return Err("an alternate data stream name longer than NTFS's 255 characters");
    }
    Ok(())
}

/// Refuses a file or link whose base name would read back as a whiteout.
pub(crate) fn not_a_whiteout_name(path: &str) -> Result<(), FormatError> {
    let base = path.rsplit_once('/').map_or(path, |(_, base)| base);
    if base.starts_with(crate::read::WHITEOUT_PREFIX) {
        return Err(FormatError::refused(
            path,
            "a name starting with .wh., which a layer tar reads as a whiteout",
        ));
    }
    Ok(())
}

/// Whether `path` (already checked) may hold whiteouts and hard links:
/// below `Files/` or `UtilityVM/Files/`, not a root itself.
pub(crate) fn in_file_tree(path: &str) -> bool {
    path.starts_with("Files/") || path.starts_with("UtilityVM/Files/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_and_files_under_them() {
        for ok in [
            "Files",
            "Files/",
            "Files/Windows/System32/x.dll",
            "Hives/System_Delta",
            "UtilityVM",
            "UtilityVM/Files/EFI",
        ] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        assert_eq!(check_path("Files/a/").unwrap(), "Files/a");
    }

    #[test]
    fn names_that_escape_or_that_windows_cannot_hold() {
        for bad in [
            "",
            "/Files/x",
            "Files/../x",
            "Files/./x",
            "Files//x",
            "Other/x",
            "x",
            "UtilityVM/Other",
            "Files/a\\..\\..\\x",
            "Files/a:b",
            "Files/a\u{1}b",
            "Files/trailing.",
            "Files/trailing ",
            "..",
            "Files/a?b",
        ] {
            let err = check_path(bad).unwrap_err().to_string();
            assert!(err.contains("refused member"), "{bad}: {err}");
        }
    }
}
