//! `kiln serve`: the HTTP API on a loaded model.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_server::{AppState, Auth, ServedModel};

use self::settings::ServerFlags;
use crate::config::FileConfig;
use crate::{ModelArgs, load};

// The flags' and the file's settings merged, one tested function a section.
mod key_reload;
mod settings;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    server: ServerFlags,
    /// The async task store (a SQLite file) [default: kiln's data folder, tasks.sqlite3].
    #[arg(long, env = "KILN_TASKS_DB")]
    tasks_db: Option<std::path::PathBuf>,
    /// Redis shared by replicas (`redis://host:port/`): async tasks, rate
    /// limits and cached answers live there (see `[redis]` in README).
    #[arg(long, env = "KILN_REDIS_URL")]
    redis_url: Option<String>,
    /// The configuration file (settings, keys, plugins and pipelines; see README).
    #[arg(long, env = "KILN_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// The plugin directory: `<name>.wasm` files, reloaded when they change
    /// (overrides `plugins.dir`).
    #[arg(long, env = "KILN_PLUGIN_DIR")]
    plugin_dir: Option<std::path::PathBuf>,
    /// Serve without plugins: only the `native` pipeline.
    #[arg(long, env = "KILN_NO_PLUGINS")]
    no_plugins: bool,
    /// Serve without API keys: anyone who can connect may generate (logged
    /// as a warning). Without this flag, keys must be configured.
    #[arg(long, env = "KILN_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
}

pub fn run(args: ServeArgs) -> Result<()> {
    // The configuration is checked before the model is loaded: a mistake
    // costs no waiting.
    let file = file_config(&args)?;
    let keys_read = args.config.as_deref().and_then(key_reload::fingerprint);
    let auth = auth(&args, &file)?;
    let limits = file.limits()?;
    let mut task_config = file.tasks.config()?;
    let lease = file.redis.lease()?;
    let listen = settings::listen(&args.server, &file.server);
    let model = settings::model(&args.model, &args.server, &file.server);
    let server = settings::server(&args.server, &file.server);
    let stores = settings::stores(args.redis_url.as_deref(), args.tasks_db.as_deref(), &file);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let redis = match stores.redis_url.as_deref() {
        Some(url) => Some(SharedRedis::connect(url, &file.redis, &runtime)?),
        None => None,
    };
    let loaded = load::load(&model.load)?;
    let id = model.id.unwrap_or_else(|| settings::default_model_id(&loaded.path));
    let engine = loaded.engine(settings::engine(&args.server, &file.server));
    let config = server.config(auth, limits, redis.as_ref().map(|r| r.shared.clone()));
    let sha256 = crate::model_digest::model_sha256(&loaded.path, &kiln_hub::cache_dir()?.join("model-digests"))?;
    let served = ServedModel::new(id, loaded.tokenizer.clone(), loaded.template).with_sha256(sha256);
    // The process's one metrics recorder, installed before anything records.
    let metrics = kiln_server::install_metrics_recorder();
    let mut state = AppState::builder(Arc::new(engine), served, config).metrics(metrics);
    let mut _watcher = None;
    if !args.no_plugins {
        let plugins = Arc::new(plugin_host(&args, &file, &loaded.tokenizer)?);
        for (i, key) in file.keys.iter().enumerate() {
            if let Some(p) = key.allowed_pipelines().find(|p| !plugins.pipelines().any(|(name, _)| name == *p)) {
                anyhow::bail!("keys[{i}] ({}): pipeline {p:?} is not defined", key.name);
            }
        }
        if plugins.watches() {
            _watcher = Some(plugins.watch().context("watching the plugin directory")?);
        }
        state = state.plugins(plugins);
    }
    let tasks = match redis.filter(|_| stores.tasks_in_redis) {
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
            let tasks_db = match stores.tasks_db {
                Some(path) => path,
                None => data_dir()?.join("tasks.sqlite3"),
            };
            kiln_server::Tasks::open(&tasks_db, task_config)
                .with_context(|| format!("opening the task store {}", tasks_db.display()))?
        }
    };
    let state = state.tasks(Arc::new(tasks)).build();

    runtime.block_on(async {
        let (host, port) = (listen.host.as_str(), listen.port);
        let listener = tokio::net::TcpListener::bind((host, port))
            .await
            .with_context(|| format!("cannot listen on {host}:{port}"))?;
        let address = listener.local_addr()?;
        tracing::info!(%address, model = %state.model().id, "serving; API docs at /docs");
        // One line on stdout that scripts (and the tests) wait for.
        println!("listening on http://{address}");
        kiln_server::spawn_workers(&state);
        if let (Auth::Keys(keys), Some(path)) = (&state.config().auth, args.config.clone()) {
            key_reload::spawn(path, keys.clone(), keys_read);
        }
        // `/ready` answers 503 until one forward pass has run.
        let warming = state.clone();
        tokio::spawn(async move {
            match warming.warm_up().await {
                Ok(()) => tracing::info!("warmed up; ready"),
                Err(e) => tracing::error!(error = %e, "the warm-up pass failed; /ready stays 503"),
            }
        });
        let draining = state.clone();
        let grace = server.drain_grace;
        let shutdown = async move {
            shutdown_signal().await;
            draining.start_draining();
            if !grace.is_zero() {
                tracing::info!(?grace, "not ready; still serving while load balancers take note");
                tokio::time::sleep(grace).await;
            }
        };
        let config = state.config().clone();
        kiln_server::serve(listener, kiln_server::router(state), shutdown, &config).await.context("serving")
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
        (false, false) => Ok(Auth::keys(kiln_access::KeyStore::new(file.keys.clone())?)),
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
