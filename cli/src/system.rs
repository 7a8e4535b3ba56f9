//! `strata drivers`, `status`, `check`, `prune` and `system df`: the store
//! and its driver as a whole.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use strata_core::store::Store;
use strata_core::{Config, CoreError, GraphDriver, open_driver, survey};

use crate::Cli;
use crate::output::{human_size, key_values_json, outln, print_json};

#[derive(Subcommand)]
pub(crate) enum SystemCommand {
    /// Space used by images, containers and layers, and what is reclaimable
    Df,
    /// Print the completion script for a shell (bash, zsh, fish, elvish,
    /// powershell)
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (strata.1 and one per subcommand) into DIR
    Man { dir: std::path::PathBuf },
}

pub(crate) fn check(cli: &Cli, config: &Config, repair: bool) -> Result<ExitCode, CoreError> {
    let store = Store::open(config)?;
    let report = if repair {
        store.repair()?
    } else {
        store.check()?
    };
    // After a repair, what is left is what it could not fix.
    let left = if repair && !report.is_clean() {
        store.check()?
    } else {
        report.clone()
    };
    if cli.json {
        print_json(json!({
            "findings": report.findings,
            "repaired": repair,
            "left": left.findings,
        }))?;
    } else if report.is_clean() {
        outln!("no inconsistencies found");
    } else {
        for f in &report.findings {
            let verb = if repair { "repaired" } else { "repair would" };
            outln!(
                "{} {}: {} ({verb}: {})",
                f.kind,
                f.subject,
                f.problem,
                f.repair
            );
        }
        if repair {
            outln!(
                "{} found, {} left",
                report.findings.len(),
                left.findings.len()
            );
        }
    }
    Ok(if left.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::output::EXIT_NO)
    })
}

pub(crate) fn prune(cli: &Cli, config: &Config, dry_run: bool) -> Result<ExitCode, CoreError> {
    let store = Store::open(config)?;
    let layers = store.prune(dry_run)?;
    if cli.json {
        print_json(json!({ "dry_run": dry_run, "layers": layers }))?;
    } else {
        for layer in &layers {
            outln!("{layer}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn disk_usage(cli: &Cli, config: &Config) -> Result<ExitCode, CoreError> {
    let store = Store::open(config)?;
    let usage = store.disk_usage()?;
    if cli.json {
        print_json(json!(usage))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<12}{:>8}{:>8}{:>14}{:>14}",
        "TYPE",
        "TOTAL",
        "UNUSED",
        "SIZE",
        "RECLAIMABLE"
    );
    for (name, line) in [
        ("Images", &usage.images),
        ("Containers", &usage.containers),
        ("Layers", &usage.layers),
    ] {
        outln!(
            "{:<12}{:>8}{:>8}{:>14}{:>14}",
            name,
            line.count,
            line.unused,
            human_size(line.size),
            human_size(line.reclaimable)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn drivers(cli: &Cli, config: &Config) -> Result<ExitCode, CoreError> {
    let reports = survey(config)?;
    if cli.json {
        print_json(json!({
            "host_abi_version": strata_plugin_abi::HOST_ABI_VERSION,
            "drivers": reports,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if reports.is_empty() {
        outln!(
            "no driver libraries found (searched {})",
            strata_core::discovery::describe(&strata_core::discovery::search_dirs(config))
        );
        return Ok(ExitCode::SUCCESS);
    }
    for r in &reports {
        outln!("{}", r.name);
        outln!("  path:        {}", r.path.display());
        outln!("  found via:   {}", r.origin);
        if let Some(abi) = &r.abi_version {
            outln!("  ABI:         strata-plugin-abi {abi}");
        }
        if let Some(description) = &r.description {
            outln!("  description: {description}");
        }
        match &r.detail {
            Some(detail) => outln!("  here:        {}: {detail}", r.state),
            None => outln!("  here:        {}", r.state),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn status(cli: &Cli, config: &Config) -> Result<ExitCode, CoreError> {
    let selected = open_driver(config)?;
    let driver = &selected.driver;
    let status = driver.status();
    let capabilities = driver.capabilities().names();
    let layers = driver.list()?.len();
    let diff_method = strata_core::layers::DiffMethod::for_driver(driver)?.describe();
    if cli.json {
        print_json(json!({
            "driver": selected.name,
            "library": selected.library,
            "reason": selected.reason,
            "passed_over": selected.passed_over,
            "graphroot": config.graphroot,
            "runroot": config.runroot,
            "config_file": config.source,
            "capabilities": capabilities,
            "diff_method": diff_method,
            "layers": layers,
            "status": key_values_json(&status),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("driver:       {}", selected.name);
    outln!("chosen:       {}", selected.reason);
    for p in &selected.passed_over {
        outln!("  passed over {}: {}", p.driver, p.reason);
    }
    outln!("library:      {}", selected.library.display());
    outln!("graph root:   {}", config.graphroot.display());
    outln!("run root:     {}", config.runroot.display());
    match &config.source {
        Some(path) => outln!("config file:  {}", path.display()),
        None => outln!("config file:  none (built-in defaults)"),
    }
    outln!(
        "capabilities: {}",
        if capabilities.is_empty() {
            "none".to_string()
        } else {
            capabilities.join(", ")
        }
    );
    outln!("diff method:  {diff_method}");
    outln!("layers:       {layers}");
    for (key, value) in status.iter() {
        outln!("{key}: {value}");
    }
    Ok(ExitCode::SUCCESS)
}
