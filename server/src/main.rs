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

/// `corral restore --from FILE [the node's usual flags]`: writes a backup into the
/// (empty) data directory those flags name, then exits.
fn restore(mut args: Vec<std::ffi::OsString>) -> ExitCode {
    args.remove(1);
    let mut from = None;
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].to_string_lossy().to_string();
        if arg == "--from" && i + 1 < args.len() {
            from = Some(std::path::PathBuf::from(args.remove(i + 1)));
            args.remove(i);
        } else if let Some(v) = arg.strip_prefix("--from=") {
            from = Some(std::path::PathBuf::from(v));
            args.remove(i);
        } else {
            i += 1;
        }
    }
    let Some(from) = from else {
        eprintln!("usage: corral restore --from FILE [--data-dir DIR --node-id I --peers ... | --config FILE]");
        return ExitCode::from(2);
    };
    let config = match Cli::try_parse_from(args)
        .map_err(|e| e.to_string())
        .and_then(|cli| Config::load(cli).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corral restore: {e}");
            return ExitCode::from(2);
        }
    };
    match corral_server::backup::restore(&config, &from) {
        Ok(zxid) => {
            println!(
                "restored {} at zxid {zxid} into {}",
                from.display(),
                config.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corral restore: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "restore") {
        return restore(args);
    }
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
        if let Some(addr) = server.admin_addr() {
            println!("corral admin listening on {addr}");
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
