//! The `corral` server binary.

use clap::Parser;
use corral_server::config::{Cli, Config, LogFormat};
use corral_server::server::Server;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn init_logging(config: &Config) {
    let filter = match &config.log {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

fn main() -> ExitCode {
    let config = match Config::load(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corral: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    // Test builds only: log (now, not at first use) the fault switches the Jepsen
    // harness turned on through the environment.
    #[cfg(feature = "sim")]
    let _ = corral_server::faults::from_env();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corral: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match Server::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("corral: {e}");
                return ExitCode::FAILURE;
            }
        };
        match server.local_addr() {
            // One line on stdout, for people and for scripts that start corral on port 0.
            Ok(addr) => println!("corral listening on {addr}"),
            Err(e) => tracing::warn!(error = %e, "cannot read the bound address"),
        }
        match server.run(shutdown_signal()).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("corral: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
