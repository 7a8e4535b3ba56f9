//! `strata-snapshotter --config FILE --address SOCKET`: serves containerd's
//! Snapshots API on a Unix socket over the store and driver the
//! configuration chooses (the same file and selection as `strata`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use strata_core::{Config, Overrides, Store};
use strata_snapshotter::{Snapshots, StrataSnapshotter};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

/// containerd's proxy snapshotter over a strata store.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// strata's storage.toml (default: STRATA_CONFIG, then the system file).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The Unix socket to serve on (containerd's proxy_plugins address).
    #[arg(long, value_name = "SOCKET")]
    address: PathBuf,
    /// The driver, overriding the configuration.
    #[arg(long)]
    driver: Option<String>,
    /// The graph root, overriding the configuration.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// The run root, overriding the configuration.
    #[arg(long, value_name = "DIR")]
    run_root: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("strata-snapshotter: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &Args) -> Result<(), String> {
    let config = Config::load(&Overrides {
        config: args.config.clone(),
        driver: args.driver.clone(),
        graphroot: args.root.clone(),
        runroot: args.run_root.clone(),
    })
    .map_err(|e| e.to_string())?;
    let store = Store::open(&config).map_err(|e| e.to_string())?;
    let driver = store.driver().name();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("start the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = listen(&args.address)?;
        tracing::info!(
            address = %args.address.display(),
            driver = %driver,
            graphroot = %config.graphroot.display(),
            "serving containerd's Snapshots API"
        );
        let service = containerd_snapshots::server(std::sync::Arc::new(StrataSnapshotter::new(
            Snapshots::new(store),
        )));
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped())
            .await;
        let _ = std::fs::remove_file(&args.address);
        served.map_err(|e| format!("serve {}: {e}", args.address.display()))
    })
}

/// Binds the socket, replacing a stale one (a socket file nobody answers
/// on, left by a snapshotter that was killed) but never a live one or
/// anything that is not a socket.
fn listen(address: &Path) -> Result<UnixListener, String> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(address) {
        if !meta.file_type().is_socket() {
            return Err(format!("{} exists and is not a socket", address.display()));
        }
        if std::os::unix::net::UnixStream::connect(address).is_ok() {
            return Err(format!(
                "{} is in use: another snapshotter answers there",
                address.display()
            ));
        }
        std::fs::remove_file(address)
            .map_err(|e| format!("remove the stale socket {}: {e}", address.display()))?;
    }
    UnixListener::bind(address).map_err(|e| format!("listen on {}: {e}", address.display()))
}

/// Resolves on SIGTERM or SIGINT: containerd's and systemd's way to stop us.
async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping");
}
