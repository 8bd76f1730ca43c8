//! The `moe` command line: every subcommand, its flags (each with an env fallback), and the
//! server's start-up and shutdown. The library holds everything else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use moe_core::config::{Limits, RuntimeConfig};
use moe_core::data::DataArgs;
use moe_core::service::{Core, Paths};
use moe_core::store::{FileStore, RegistryStore};
use moe_server::control::fleet::{Fleet, Replica};
use moe_server::etcd::{EtcdStore, EtcdTarget};
use moe_server::http::server::Connections;
use moe_server::http::{AppState, app};
use moe_tools::bench::BenchOptions;
use moe_tools::fit::FitOptions;
use moe_tools::report::ReportOptions;
use moe_tools::select::SelectOptions;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "moe", version, about = "Mixture-of-experts text classification service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the experts named by the registry over HTTP.
    Serve(ServeArgs),
    /// Evaluate one bundle on a split: ROC, AUC, EER and its threshold, F1 (JSON).
    Eval(WithData<EvalOptions>),
    /// Write each bundle's validation EER threshold and metrics into its card.
    Calibrate(WithData<CalibrateOptions>),
    /// Keep the best calibrated candidate per class, fit the gate, write a model root.
    Select(WithData<SelectOptions>),
    /// Fit a calibrated expert set from a labelled CSV; write a model root.
    Fit(FitArgs),
    /// Score every system (served MoE, families, global baselines) on a split.
    Report(WithData<ReportOptions>),
    /// Time the expert set through the service's executors, without HTTP (JSON lines).
    Bench(WithData<BenchOptions>),
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Network")]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "MOE_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, env = "MOE_PORT", default_value_t = 8080)]
    port: u16,
    /// Model root: the bundles, trunks/ and the shipped registry.json.
    ///
    /// The service never writes the shipped registry.json; uploads and training add bundle
    /// folders to it.
    #[arg(long, env = "MOE_MODELS", default_value = "models", help_heading = "Experts")]
    models: PathBuf,
    /// State folder: the live registry (active set, history) and the feedback log.
    ///
    /// Seeded from the model root's registry.json on the first start, and tied to that root (a
    /// state seeded from another root is refused). Remove its registry.json to go back to the
    /// shipped set.
    #[arg(long, env = "MOE_STATE", default_value = "state", help_heading = "Experts")]
    state: PathBuf,
    /// Where the live registry is kept: "file" (the state folder) or etcd://HOST:PORT/P.
    ///
    /// "file" serves one process. etcd://host:port[,host:port...]/prefix is shared by every
    /// replica of a fleet: a change on any replica is committed there and every replica
    /// converges to it (docs/FLEET.md).
    #[arg(long, env = "MOE_REGISTRY", default_value = "file", help_heading = "Fleet")]
    registry: String,
    /// This replica's name in the fleet (default: host name and port).
    #[arg(long, env = "MOE_REPLICA_ID", help_heading = "Fleet")]
    replica_id: Option<String>,
    /// URL where the other replicas reach this one (default: http://HOST:PORT).
    #[arg(long, env = "MOE_ADVERTISE_URL", help_heading = "Fleet")]
    advertise_url: Option<String>,
    /// Bearer token for the admin (mutating) routes; without it they are disabled.
    #[arg(long, env = "MOE_ADMIN_TOKEN", hide_env_values = true, help_heading = "Admin")]
    admin_token: Option<String>,
    /// A file holding the admin token (e.g. a mounted Kubernetes Secret).
    ///
    /// Instead of --admin-token; surrounding whitespace is ignored, an empty or unreadable file
    /// is an error.
    #[arg(long, env = "MOE_ADMIN_TOKEN_FILE", conflicts_with = "admin_token", help_heading = "Admin")]
    admin_token_file: Option<PathBuf>,
    #[command(flatten)]
    limits: Limits,
    #[command(flatten)]
    connections: Connections,
    #[command(flatten)]
    runtime: RuntimeConfig,
    /// Labelled data for automatic selection (`POST /experts/{class}/select`); when the file is
    /// absent the service still starts and selection answers 400.
    #[command(flatten, next_help_heading = "Labelled data (selection, teaching)")]
    data: DataArgs,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "MOE_LOG_JSON", default_value_t = false, help_heading = "Logging")]
    log_json: bool,
    /// Threads that run the HTTP layer; 0: a quarter of the cores, at least one.
    ///
    /// The async runtime's workers: parsing, JSON, the linear heads. The inference sessions have
    /// threads of their own.
    // On 2 cores one HTTP thread cost 5-9 % less CPU a request at concurrency 16 than two
    // (docs/BENCHMARKS.md, "ab-http-threads").
    #[arg(long, env = "MOE_HTTP_THREADS", default_value_t = 0, help_heading = "Performance tuning")]
    http_threads: usize,
}

#[derive(Debug, Args)]
struct EvalOptions {
    /// Model root holding the bundle (and trunks/).
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Bundle folder name under the model root.
    #[arg(long)]
    bundle: String,
    /// Split to evaluate on.
    #[arg(long, default_value = "val")]
    split: String,
}

#[derive(Debug, Args)]
struct CalibrateOptions {
    /// Model root whose bundles' cards are calibrated.
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Bundles to calibrate (default: every bundle folder in the model root).
    #[arg(long, value_delimiter = ',')]
    bundles: Vec<String>,
    /// Thresholds are set on this split; never on test.
    #[arg(long, default_value = "val", value_parser = ["val", "train"])]
    split: String,
}

/// A subcommand's own options plus the data and runtime flags every offline command shares.
#[derive(Debug, Args)]
struct FitArgs {
    #[command(flatten)]
    options: FitOptions,
    #[command(flatten)]
    runtime: RuntimeConfig,
}

#[derive(Debug, Args)]
struct WithData<T: Args> {
    #[command(flatten)]
    options: T,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    runtime: RuntimeConfig,
}

fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    // Colours only on a terminal: a container's log or a file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json { b.json().init() } else { b.init() }
}

/// A multi-thread async runtime with `workers` worker threads (0: tokio's default, one per core).
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        b.worker_threads(workers);
    }
    Ok(b.enable_all().build()?)
}

/// `--http-threads`: as given, or for 0 a quarter of `cores` (at least one). At concurrency 16 on
/// 2 cores the HTTP side (parsing, JSON, the heads, the kernel's network path) was ~20 % of the
/// service's CPU and the trunk the rest (docs/BENCHMARKS.md, cpu-per-request).
fn http_threads(given: usize, cores: usize) -> usize {
    if given > 0 { given } else { cores.div_ceil(4).max(1) }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log_json = matches!(&cli.command, Command::Serve(a) if a.log_json);
    init_tracing(log_json);
    match cli.command {
        Command::Serve(a) => {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            let rt = runtime(http_threads(a.http_threads, cores))?;
            let served = rt.block_on(serve(a));
            // Dropping a runtime waits for every blocking task (a training fit, a bundle load):
            // after the drain, give them a moment, then exit anyway.
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            served
        }
        Command::Eval(a) => {
            let o = &a.options;
            let out = moe_core::evaluation::eval_bundle(&o.models, &o.bundle, &o.split, &a.data, &a.runtime)?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Command::Calibrate(a) => {
            let o = &a.options;
            Ok(moe_core::evaluation::calibrate(&o.models, &o.bundles, &o.split, &a.data, &a.runtime)?)
        }
        Command::Select(a) => Ok(moe_tools::select::select(&a.options, &a.data, &a.runtime)?),
        Command::Fit(a) => {
            let summary = moe_tools::fit::fit_set(&a.options, &a.runtime)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Command::Report(a) => Ok(moe_tools::report::report(&a.options, &a.data, &a.runtime)?),
        Command::Bench(a) => Ok(runtime(0)?.block_on(moe_tools::bench::run(&a.options, &a.data, &a.runtime))?),
    }
}

/// Bind first (so /healthz answers and /readyz says "loading"), load and warm the experts off the
/// async workers, then serve until SIGINT/SIGTERM, finishing in-flight requests.
async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let addr: SocketAddr = format!("{}:{}", a.host, a.port).parse().context("--host/--port")?;
    a.limits.check().map_err(anyhow::Error::msg)?;
    let etcd = match a.registry.as_str() {
        "file" => None,
        url => Some(EtcdStore::connect(EtcdTarget::parse(url)?).await?),
    };
    let store: Arc<dyn RegistryStore> = match &etcd {
        Some(etcd) => Arc::new(etcd.clone()),
        None => Arc::new(FileStore::new(&a.state)),
    };
    let core = Core::with_store(Paths::new(&a.models, &a.state), a.runtime.clone(), a.limits.clone(), store);
    let data = a.data.available().then(|| a.data.clone());
    if data.is_none() {
        tracing::warn!(data = %a.data.data.display(), "no labelled data: selection jobs are disabled (--data / MOE_DATA)");
    }
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, models = %a.models.display(), state = %a.state.display(), registry = %a.registry,
        "listening; loading experts");
    let replica = Replica {
        id: a.replica_id.clone().unwrap_or_else(|| format!("{}:{}", hostname(), a.port)),
        address: a.advertise_url.clone().unwrap_or_else(|| format!("http://{addr}")),
    };
    let fleet = Fleet::new(core.clone(), etcd, replica);
    let loader = tokio::task::spawn_blocking({
        let core = core.clone();
        move || {
            moe_server::control::upload::remove_leftovers(core.root())?;
            load_waiting_for_the_registry(&core)
        }
    });
    let token = match &a.admin_token_file {
        Some(path) => {
            let t = std::fs::read_to_string(path).with_context(|| format!("--admin-token-file {}", path.display()))?;
            anyhow::ensure!(!t.trim().is_empty(), "--admin-token-file {}: the file is empty", path.display());
            Some(t.trim().to_string())
        }
        None => a.admin_token.clone(),
    };
    let state = AppState::new(core).with_data(data).with_admin_token(token).with_fleet(fleet.clone());
    // Our own accept loop: the connection cap, header deadline and drain of --max-connections etc.
    let server =
        tokio::spawn(moe_server::http::server::serve(listener, app(state), a.connections.clone(), shutdown_signal()));
    // A bad registry or bundle at start is fatal (non-zero exit), never a silent fallback.
    loader.await.context("loader panicked")?.context("loading the experts")?;
    fleet.start();
    tracing::info!("ready");
    server.await.context("server task")?.context("server")?;
    fleet.leave().await;
    Ok(())
}

/// Load the registry's set; while a shared registry cannot be reached, wait for it (the replica
/// answers /readyz 503 meanwhile) instead of exiting: etcd may simply start after the replicas.
fn load_waiting_for_the_registry(core: &Core) -> moe_core::Result<()> {
    loop {
        // Before the set is ready: a bundle an upload placed but never committed is gone by then,
        // so a retry of that upload is not refused as a conflict.
        let recover = |doc: &moe_core::bundle::RegistryFile| {
            moe_server::control::upload::recover_pending(core.root(), doc).map(drop)
        };
        match core.load_registry_with(&recover) {
            Err(e @ moe_core::Error::Registry { .. }) => {
                tracing::warn!(error = %moe_core::error::chain(&e), "registry unreachable; retrying in 1 s");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "moe".into())
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every subcommand's and flag's `-h` line is one short sentence: details follow a blank `///`
    /// line and show only in `--help`.
    #[test]
    fn help_fits_a_terminal() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        let mut bad = Vec::new();
        let mut check = |what: String, help: Option<String>| match help {
            None => bad.push(format!("{what}: no help")),
            Some(h) if h.len() > 80 || h.contains('\n') => bad.push(format!("{what} ({} chars): {h}", h.len())),
            Some(_) => {}
        };
        for sub in cli.get_subcommands() {
            check(format!("moe {}", sub.get_name()), sub.get_about().map(|s| s.to_string()));
            for a in sub.get_arguments().filter(|a| !["help", "version"].contains(&a.get_id().as_str())) {
                check(format!("moe {} --{}", sub.get_name(), a.get_id()), a.get_help().map(|s| s.to_string()));
            }
        }
        assert!(bad.is_empty(), "help lines to shorten:\n{}", bad.join("\n"));
    }

    /// `moe serve -h` reads like a manual: every flag under a heading, in the order of the headings
    /// below, and the long help cites no benchmark (those stay in docs/).
    #[test]
    fn serve_help_is_grouped_under_headings_and_cites_no_benchmark() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve");
        let order = ["Network", "Experts", "Fleet", "Admin", "Limits", "Performance tuning"];
        let allowed: Vec<&str> =
            order.iter().copied().chain(["Labelled data (selection, teaching)", "Logging"]).collect();
        let mut bad = Vec::new();
        for a in serve.get_arguments().filter(|a| !["help", "version"].contains(&a.get_id().as_str())) {
            let heading = a.get_help_heading().unwrap_or("(none)");
            if !allowed.contains(&heading) {
                bad.push(format!("--{} under {heading}", a.get_id()));
            }
            let long = a.get_long_help().or(a.get_help()).map(|h| h.to_string()).unwrap_or_default();
            if ["BENCHMARKS", "docs/bench", "bench/", "Measured"].iter().any(|c| long.contains(c)) {
                bad.push(format!("--{} cites a benchmark: {long}", a.get_id()));
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
        let short = serve.clone().render_help().to_string();
        let at: Vec<usize> = order.iter().map(|h| short.find(&format!("{h}:\n")).unwrap_or(usize::MAX)).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]) && at[order.len() - 1] < usize::MAX, "{at:?}\n{short}");
    }

    #[test]
    fn http_threads_are_a_quarter_of_the_cores_unless_given() {
        assert_eq!([1, 2, 4, 5, 16].map(|cores| http_threads(0, cores)), [1, 1, 1, 2, 4]);
        assert_eq!(http_threads(3, 2), 3);
    }
}
