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
    /// Address to listen on (`0.0.0.0` for every interface) [default: 127.0.0.1].
    ///
    /// Each setting: this flag, else its `KILN_*` variable, else `[server]` in
    /// the config file, else the default.
    #[arg(long, env = "KILN_HOST")]
    host: Option<String>,
    /// Port to listen on; 0 picks a free one (printed at start) [default: 8000].
    #[arg(long, env = "KILN_PORT")]
    port: Option<u16>,
    /// The model's name in the API (default: the file name without `.gguf`).
    #[arg(long, env = "KILN_MODEL_ID")]
    model_id: Option<String>,
    /// Sequences decoded together in one step [default: 16].
    #[arg(long, env = "KILN_MAX_BATCH")]
    max_batch: Option<usize>,
    /// Requests waiting for a batch slot before new ones get 503 [default: 64].
    #[arg(long, env = "KILN_MAX_QUEUE")]
    max_queue: Option<usize>,
    /// Larger request bodies get 413 [default: 2097152].
    #[arg(long, env = "KILN_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Memory for reusing shared prompt prefixes across requests, in MiB (0 disables) [default: 256].
    #[arg(long, env = "KILN_PREFIX_CACHE_MIB")]
    prefix_cache_mib: Option<usize>,
    /// On Ctrl-C or SIGTERM, seconds open requests may run before they are cut [default: 30].
    #[arg(long, env = "KILN_DRAIN_TIMEOUT_SECS")]
    drain_timeout_secs: Option<u64>,
    /// On a shutdown signal, seconds `/ready` answers 503 while requests are
    /// still taken, so load balancers stop sending first [default: 0].
    #[arg(long, env = "KILN_DRAIN_GRACE_SECS")]
    drain_grace_secs: Option<u64>,
    /// The async task store (a SQLite file) [default: kiln's data folder, tasks.sqlite3].
    #[arg(long, env = "KILN_TASKS_DB")]
    tasks_db: Option<std::path::PathBuf>,
    /// Redis shared by replicas (`redis://host:port/`): async tasks, rate
    /// limits and cached answers live there (see `[redis]` in README).
    #[arg(long, env = "KILN_REDIS_URL")]
    redis_url: Option<String>,
    /// The configuration file (plugins and pipelines; see README).
    #[arg(long, env = "KILN_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// The plugin directory: `<name>.wasm` files, reloaded when they change
    /// (overrides `plugins.dir`).
    #[arg(long, env = "KILN_PLUGIN_DIR")]
    plugin_dir: Option<std::path::PathBuf>,
    /// Who may manage plugins over HTTP (`/v1/plugins`) without API keys [default: loopback].
    #[arg(long, env = "KILN_ADMIN", value_enum)]
    admin: Option<Admin>,
    /// Seconds a generation may run before it is stopped (504, or an error event on a stream) [default: 120].
    #[arg(long, env = "KILN_REQUEST_TIMEOUT_SECS")]
    request_timeout_secs: Option<u64>,
    /// Memory for cached answers of deterministic requests, in MiB (0 disables the cache) [default: 64].
    #[arg(long, env = "KILN_CACHE_MIB")]
    cache_mib: Option<usize>,
    /// Seconds a cached answer is served before it is generated anew [default: 600].
    #[arg(long, env = "KILN_CACHE_TTL_SECS")]
    cache_ttl_secs: Option<u64>,
    /// Serve without plugins: only the `native` pipeline.
    #[arg(long, env = "KILN_NO_PLUGINS")]
    no_plugins: bool,
    /// Serve without API keys: anyone who can connect may generate (logged
    /// as a warning). Without this flag, keys must be configured.
    #[arg(long, env = "KILN_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
}

#[derive(clap::ValueEnum, serde::Deserialize, Clone, Copy, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
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
    let mut task_config = file.tasks.config()?;
    let lease = file.redis.lease()?;
    let server = &file.server;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let redis = match args.redis_url.as_deref().or(file.redis.url.as_deref()) {
        Some(url) => Some(SharedRedis::connect(url, &file.redis, &runtime)?),
        None => None,
    };
    let model_args = ModelArgs {
        model: args.model.model.clone().or_else(|| server.model.clone()),
        max_context: args.model.max_context.or(server.max_context),
    };
    let loaded = load::load(&model_args)?;
    let engine_defaults = EngineConfig::default();
    let server_defaults = ServerConfig::default();
    let cache_defaults = kiln_server::CacheConfig::default();
    let host = args.host.clone().or_else(|| server.host.clone()).unwrap_or_else(|| "127.0.0.1".into());
    let port = args.port.or(server.port).unwrap_or(8000);
    let id = args.model_id.clone().or_else(|| server.model_id.clone()).unwrap_or_else(|| {
        let name = loaded.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        name.strip_suffix(".gguf").unwrap_or(&name).to_string()
    });
    let engine = loaded.engine(EngineConfig {
        max_batch: args.max_batch.or(server.max_batch).unwrap_or(engine_defaults.max_batch),
        max_queue: args.max_queue.or(server.max_queue).unwrap_or(engine_defaults.max_queue),
        prefix_cache_bytes: args
            .prefix_cache_mib
            .or(server.prefix_cache_mib)
            .map_or(engine_defaults.prefix_cache_bytes, |m| m << 20),
        ..engine_defaults
    });
    let secs =
        |flag: Option<u64>, file: Option<u64>, default: Duration| flag.or(file).map_or(default, Duration::from_secs);
    let drain_timeout = secs(args.drain_timeout_secs, server.drain_timeout_secs, server_defaults.drain_timeout);
    let grace = secs(args.drain_grace_secs, server.drain_grace_secs, Duration::ZERO);
    let admin = match args.admin.or(server.admin).unwrap_or(Admin::Loopback) {
        Admin::Loopback => AdminAccess::Loopback,
        Admin::Anyone => AdminAccess::Anyone,
        Admin::None => AdminAccess::Nobody,
    };
    let config = ServerConfig {
        max_body_bytes: args.max_body_bytes.or(server.max_body_bytes).unwrap_or(server_defaults.max_body_bytes),
        drain_timeout,
        admin,
        auth,
        limits,
        public_metrics: server.public_metrics.unwrap_or(server_defaults.public_metrics),
        request_timeout: secs(args.request_timeout_secs, server.request_timeout_secs, server_defaults.request_timeout)
            .max(Duration::from_secs(1)),
        cache: kiln_server::CacheConfig {
            max_bytes: args.cache_mib.or(server.cache_mib).map_or(cache_defaults.max_bytes, |m| m << 20),
            ttl: secs(args.cache_ttl_secs, server.cache_ttl_secs, cache_defaults.ttl),
        },
        redis: redis.as_ref().map(|r| r.shared.clone()),
        ..server_defaults
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
    let tasks = match redis.filter(|_| file.redis.tasks.unwrap_or(true)) {
        Some(redis) => {
            // Renewals also carry cancellations made through other replicas:
            // often enough that a cancelled generation stops within seconds.
            task_config.heartbeat = (lease / 3).min(Duration::from_secs(2));
            let config = kiln_tasks::RedisTaskConfig {
                prefix: redis.shared.prefix.clone(),
                lease,
                on_abandoned: task_config.on_restart,
            };
            let store = kiln_tasks::RedisStore::open(redis.pool, config).context("opening the task store in redis")?;
            kiln_server::Tasks::new(Box::new(store), task_config)?
        }
        None => {
            let tasks_db = match args.tasks_db.clone().or_else(|| file.tasks.path.clone()) {
                Some(path) => path,
                None => data_dir()?.join("tasks.sqlite3"),
            };
            kiln_server::Tasks::open(&tasks_db, task_config)
                .with_context(|| format!("opening the task store {}", tasks_db.display()))?
        }
    };
    state.attach_tasks(Arc::new(tasks));

    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((host.as_str(), port))
            .await
            .with_context(|| format!("cannot listen on {host}:{port}"))?;
        let address = listener.local_addr()?;
        tracing::info!(%address, model = %state.model().id, "serving; API docs at /docs");
        // One line on stdout that scripts (and the tests) wait for.
        println!("listening on http://{address}");
        kiln_server::spawn_workers(&state);
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
            if !grace.is_zero() {
                tracing::info!(?grace, "not ready; still serving while load balancers take note");
                tokio::time::sleep(grace).await;
            }
        };
        kiln_server::serve(listener, kiln_server::router(state), shutdown, drain_timeout).await.context("serving")
    })
}

/// The Redis replicas share: a pool of blocking connections for the task
/// store, a multiplexed one for limits and the cache.
struct SharedRedis {
    shared: kiln_server::RedisShared,
    pool: r2d2::Pool<kiln_tasks::RedisConnector>,
}

impl SharedRedis {
    fn connect(url: &str, section: &crate::config::RedisSection, runtime: &tokio::runtime::Runtime) -> Result<Self> {
        let client = redis::Client::open(url).context("redis url")?;
        let timeout = Duration::from_secs(5);
        // Limits and the cache are on every request's path: a Redis that
        // stops answering costs a request at most a second before it goes on
        // without (admitted; not served from the shared cache).
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(Duration::from_secs(1)));
        let conn = runtime
            .block_on(redis::aio::ConnectionManager::new_with_config(client.clone(), config))
            .context("connecting to redis")?;
        let pool = kiln_tasks::RedisConnector::pool(client, 16, timeout).context("connecting to redis")?;
        tracing::info!(prefix = %section.prefix(), "sharing state through redis");
        let shared = kiln_server::RedisShared {
            conn,
            prefix: section.prefix(),
            limits: section.rate_limits.unwrap_or(true),
            cache: section.cache.unwrap_or(true),
        };
        Ok(SharedRedis { shared, pool })
    }
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

/// Where kiln keeps what must last (the task store): `$KILN_DATA_DIR`, else
/// the platform's data folder (`~/.local/share/kiln` on Linux).
fn data_dir() -> Result<std::path::PathBuf> {
    match std::env::var_os("KILN_DATA_DIR") {
        Some(dir) if !dir.is_empty() => Ok(dir.into()),
        _ => dirs::data_dir()
            .map(|d| d.join("kiln"))
            .context("no data folder for the task store: set KILN_DATA_DIR or --tasks-db"),
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
