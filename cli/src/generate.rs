//! `strata system completions SHELL` and `strata system man DIR`: shell
//! completions and man pages made from the command's own definition, so
//! they never disagree with it (the install script writes both).

use std::path::Path;

use clap::CommandFactory;
use strata_core::CoreError;

use crate::Cli;

/// Writes the completion script for `shell` to standard output.
pub(crate) fn completions(shell: clap_complete::Shell) -> Result<(), CoreError> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "strata", &mut out);
    crate::output::write_line(format_args!("{}", String::from_utf8_lossy(&out).trim_end()))
}

/// Writes `strata.1` and one page per subcommand (`strata-layer-list.1`)
/// into `dir`.
pub(crate) fn man_pages(dir: &Path) -> Result<(), CoreError> {
    std::fs::create_dir_all(dir).map_err(|e| CoreError::io("create", dir, e))?;
    write_pages(Cli::command(), dir, "strata")
}

fn write_pages(command: clap::Command, dir: &Path, name: &str) -> Result<(), CoreError> {
    let command = command.name(name.to_string());
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .map_err(|e| CoreError::io("render", &path, e))?;
    std::fs::write(&path, page).map_err(|e| CoreError::io("write", &path, e))?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), dir, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(())
}
