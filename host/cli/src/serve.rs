//! `kiln serve`: the HTTP API on a loaded model.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_engine::EngineConfig;
use kiln_server::{AdminAccess, AppState, Auth, ServedModel, ServerConfig};

use crate::config::FileConfig;
use crate::{ModelArgs, load};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (`0.0.0.0` for every interface).
    #[arg(long, env = "KILN_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one (printed at start).
    #[arg(long, env = "KILN_PORT", default_value_t = 8000)]
    port: u16,
    /// The model's name in the API (default: the file name without `.gguf`).
    #[arg(long, env = "KILN_MODEL_ID")]
    model_id: Option<String>,
    /// Sequences decoded together in one step.
    #[arg(long, env = "KILN_MAX_BATCH", default_value_t = EngineConfig::default().max_batch)]
    max_batch: usize,
    /// Requests waiting for a batch slot before new ones get 503.
    #[arg(long, env = "KILN_MAX_QUEUE", default_value_t = EngineConfig::default().max_queue)]
    max_queue: usize,
    /// Larger request bodies get 413.
    #[arg(long, env = "KILN_MAX_BODY_BYTES", default_value_t = ServerConfig::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Memory for reusing shared prompt prefixes across requests, in MiB (0 disables).
    #[arg(long, env = "KILN_PREFIX_CACHE_MIB", default_value_t = EngineConfig::default().prefix_cache_bytes >> 20)]
    prefix_cache_mib: usize,
    /// On Ctrl-C or SIGTERM, seconds open requests may run before they are cut.
    #[arg(long, env = "KILN_DRAIN_TIMEOUT_SECS", default_value_t = ServerConfig::default().drain_timeout.as_secs())]
    drain_timeout_secs: u64,
    /// The configuration file (plugins and pipelines; see README).
    #[arg(long, env = "KILN_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// The plugin directory: `<name>.wasm` files, reloaded when they change
    /// (overrides `plugins.dir`).
    #[arg(long, env = "KILN_PLUGIN_DIR")]
    plugin_dir: Option<std::path::PathBuf>,
    /// Who may manage plugins over HTTP (`/v1/plugins`).
    #[arg(long, env = "KILN_ADMIN", value_enum, default_value_t = Admin::Loopback)]
    admin: Admin,
    /// Seconds a generation may run before it is stopped (504, or an error event on a stream).
    #[arg(long, env = "KILN_REQUEST_TIMEOUT_SECS", default_value_t = ServerConfig::default().request_timeout.as_secs())]
    request_timeout_secs: u64,
    /// Memory for cached answers of deterministic requests, in MiB (0 disables the cache).
    #[arg(long, env = "KILN_CACHE_MIB", default_value_t = kiln_server::CacheConfig::default().max_bytes >> 20)]
    cache_mib: usize,
    /// Seconds a cached answer is served before it is generated anew.
    #[arg(long, env = "KILN_CACHE_TTL_SECS", default_value_t = kiln_server::CacheConfig::default().ttl.as_secs())]
    cache_ttl_secs: u64,
    /// Serve without plugins: only the `native` pipeline.
    #[arg(long, env = "KILN_NO_PLUGINS")]
    no_plugins: bool,
    /// Serve without API keys: anyone who can connect may generate (logged
    /// as a warning). Without this flag, keys must be configured.
    #[arg(long, env = "KILN_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Admin {
    /// Clients on this machine only.
    Loopback,
    /// Every client (behind a trusted network only).
    Anyone,
    /// Nobody: plugins change only through their files.
    None,
}

pub fn run(args: ServeArgs) -> Result<()> {
    // The configuration is checked before the model is loaded: a mistake
    // costs no waiting.
    let file = file_config(&args)?;
    let auth = auth(&args, &file)?;
    let limits = file.limits()?;
    let loaded = load::load(&args.model)?;
    let id = args.model_id.clone().unwrap_or_else(|| {
        let name = loaded.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        name.strip_suffix(".gguf").unwrap_or(&name).to_string()
    });
    let engine = loaded.engine(EngineConfig {
        max_batch: args.max_batch,
        max_queue: args.max_queue,
        prefix_cache_bytes: args.prefix_cache_mib << 20,
        ..EngineConfig::default()
    });
    let drain_timeout = Duration::from_secs(args.drain_timeout_secs);
    let admin = match args.admin {
        Admin::Loopback => AdminAccess::Loopback,
        Admin::Anyone => AdminAccess::Anyone,
        Admin::None => AdminAccess::Nobody,
    };
    let config = ServerConfig {
        max_body_bytes: args.max_body_bytes,
        drain_timeout,
        admin,
        auth,
        limits,
        request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
        cache: kiln_server::CacheConfig {
            max_bytes: args.cache_mib << 20,
            ttl: Duration::from_secs(args.cache_ttl_secs),
        },
        ..ServerConfig::default()
    };
    let served = ServedModel::new(id, loaded.tokenizer.clone(), loaded.template);
    let mut _watcher = None;
    let state = if args.no_plugins {
        AppState::new(Arc::new(engine), served, config)
    } else {
        let plugins = Arc::new(plugin_host(&args, &file, &loaded.tokenizer)?);
        for (i, key) in file.keys.iter().enumerate() {
            if let Some(p) = key.pipeline.as_deref().filter(|p| !plugins.pipelines().any(|(name, _)| name == *p)) {
                anyhow::bail!("keys[{i}] ({}): pipeline {p:?} is not defined", key.name);
            }
        }
        if plugins.watches() {
            _watcher = Some(plugins.watch().context("watching the plugin directory")?);
        }
        AppState::with_plugins(Arc::new(engine), served, config, plugins)
    };

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let address = listener.local_addr()?;
        tracing::info!(%address, model = %state.model().id, "serving; API docs at /docs");
        // One line on stdout that scripts (and the tests) wait for.
        println!("listening on http://{address}");
        // `/ready` answers 503 until one forward pass has run.
        let warming = state.clone();
        tokio::spawn(async move {
            match warming.warm_up().await {
                Ok(()) => tracing::info!("warmed up; ready"),
                Err(e) => tracing::error!(error = %e, "the warm-up pass failed; /ready stays 503"),
            }
        });
        let draining = state.clone();
        let shutdown = async move {
            shutdown_signal().await;
            draining.start_draining();
        };
        kiln_server::serve(listener, kiln_server::router(state), shutdown, drain_timeout).await.context("serving")
    })
}

/// API keys from the configuration, or the explicit choice to run without.
fn auth(args: &ServeArgs, file: &FileConfig) -> Result<Auth> {
    match (file.keys.is_empty(), args.insecure_no_auth) {
        (true, true) => {
            tracing::warn!("serving WITHOUT API keys (--insecure-no-auth): anyone who can connect may generate");
            Ok(Auth::Insecure)
        }
        (true, false) => anyhow::bail!(
            "no API keys are configured. Create one with `kiln keys create`, add the [[keys]] entry it prints to \
             a config file and pass --config FILE; or run without keys with --insecure-no-auth"
        ),
        (false, true) => {
            anyhow::bail!("--insecure-no-auth was given, but the configuration has keys; drop one of them")
        }
        (false, false) => Ok(Auth::Keys(Arc::new(kiln_access::KeyStore::new(file.keys.clone())?))),
    }
}

fn file_config(args: &ServeArgs) -> Result<FileConfig> {
    args.config.as_deref().map(FileConfig::read).transpose().map(Option::unwrap_or_default)
}

/// The built-in plugins, the plugin directory's and the configured
/// pipelines; compiled plugins are cached next to the models.
fn plugin_host(
    args: &ServeArgs,
    file: &FileConfig,
    tokenizer: &kiln_tokenizer::Tokenizer,
) -> Result<kiln_pipeline::PluginHost> {
    let cache_dir = kiln_hub::cache_dir()?.join("compiled-plugins");
    let config = file.plugins(args.plugin_dir.clone(), cache_dir)?;
    let started = std::time::Instant::now();
    let host = kiln_pipeline::PluginHost::new(tokenizer, config).context("loading plugins")?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        default_pipeline = host.default_pipeline(),
        dir = ?host.dir(),
        "plugins loaded"
    );
    Ok(host)
}

/// Ctrl-C or SIGTERM: stop accepting connections, let open requests finish.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing open requests");
}
