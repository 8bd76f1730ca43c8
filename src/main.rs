use std::future::IntoFuture;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use moe::config::{Cli, Command, ServeConfig};
use moe::core::Core;
use moe::http::{AppState, app};
use tracing_subscriber::EnvFilter;

fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json { b.json().init() } else { b.init() }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(cfg) => {
            init_tracing(cfg.log_json);
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(cfg))
        }
        Command::Eval(a) => {
            init_tracing(false);
            Ok(moe::eval::cli::eval(a)?)
        }
        Command::Calibrate(a) => {
            init_tracing(false);
            Ok(moe::eval::cli::calibrate(a)?)
        }
        Command::Select(a) => {
            init_tracing(false);
            Ok(moe::eval::cli::select(a)?)
        }
        Command::Bench(a) => {
            init_tracing(false);
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(moe::bench::run(a))?;
            Ok(())
        }
        Command::Report(a) => {
            init_tracing(false);
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(moe::eval::report::report(a))?;
            Ok(())
        }
    }
}

/// Bind first (so /healthz answers and /readyz says "loading"), load and warm the experts off the
/// async workers, then serve until SIGINT/SIGTERM, finishing in-flight requests.
async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let addr: SocketAddr = format!("{}:{}", cfg.host, cfg.port).parse().context("--host/--port")?;
    let core = Core::new(cfg.models.clone(), cfg.runtime.clone(), cfg.limits.clone());
    let _ = core.data.set(cfg.data.clone());
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, models = %cfg.models.display(), "listening; loading experts");
    let loader = {
        let core = core.clone();
        tokio::task::spawn_blocking(move || core.load_registry())
    };
    let server = tokio::spawn(
        axum::serve(listener, app(AppState::new(core).with_admin_token(cfg.admin_token.clone())))
            .with_graceful_shutdown(shutdown_signal())
            .into_future(),
    );
    // A bad registry or bundle at start is fatal (non-zero exit), never a silent fallback.
    loader.await.context("loader panicked")?.context("loading the experts")?;
    tracing::info!("ready");
    server.await.context("server task")?.context("server")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}
