//! `kiln serve`'s settings, each resolved in one place: its flag, else the
//! flag's `KILN_*` variable (clap reads both, the flag first), else the
//! config file, else the default. One pure function per section, so the
//! precedence and the unit conversions are tested without a model, a socket
//! or the process environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use kiln_access::AdminAccess;
use kiln_engine::EngineConfig;
use kiln_server::{Auth, CacheConfig, ConnectionLimits, RedisShared, ServerConfig};

use crate::ModelArgs;
use crate::config::{FileConfig, ServerSection};

/// The flags of `kiln serve` that `[server]` in the config file can also
/// set, under the same names with `_` for `-`.
#[derive(clap::Args, Debug, Default)]
pub struct ServerFlags {
    /// Address to listen on (`0.0.0.0` for every interface) [default: 127.0.0.1].
    ///
    /// Each setting: this flag, else its `KILN_*` variable, else `[server]` in
    /// the config file, else the default.
    #[arg(long, env = "KILN_HOST")]
    pub host: Option<String>,
    /// Port to listen on; 0 picks a free one (printed at start) [default: 8000].
    #[arg(long, env = "KILN_PORT")]
    pub port: Option<u16>,
    /// The model's name in the API (default: the file name without `.gguf`).
    #[arg(long, env = "KILN_MODEL_ID")]
    pub model_id: Option<String>,
    /// Sequences decoded together in one step [default: 16].
    #[arg(long, env = "KILN_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Requests waiting for a batch slot before new ones get 503 [default: 64].
    #[arg(long, env = "KILN_MAX_QUEUE")]
    pub max_queue: Option<usize>,
    /// Larger request bodies get 413 [default: 2097152].
    #[arg(long, env = "KILN_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Memory for reusing shared prompt prefixes across requests, in MiB (0 disables) [default: 256].
    #[arg(long, env = "KILN_PREFIX_CACHE_MIB")]
    pub prefix_cache_mib: Option<usize>,
    /// Memory the running sequences' keys and values may take, in MiB: each
    /// sets aside its prompt plus `max_tokens` as it starts, and waits in the
    /// queue until that much is free [default: 2048].
    #[arg(long, env = "KILN_KV_CACHE_MIB", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub kv_cache_mib: Option<usize>,
    /// On Ctrl-C or SIGTERM, seconds open requests may run before they are cut [default: 30].
    #[arg(long, env = "KILN_DRAIN_TIMEOUT_SECS")]
    pub drain_timeout_secs: Option<u64>,
    /// On a shutdown signal, seconds `/ready` answers 503 while requests are
    /// still taken, so load balancers stop sending first [default: 0].
    #[arg(long, env = "KILN_DRAIN_GRACE_SECS")]
    pub drain_grace_secs: Option<u64>,
    /// Who may manage plugins over HTTP (`/v1/plugins`) without API keys [default: loopback].
    #[arg(long, env = "KILN_ADMIN", value_parser = admin_parser())]
    pub admin: Option<AdminAccess>,
    /// Seconds a generation may run before it is stopped (504, or an error event on a stream) [default: 120].
    #[arg(long, env = "KILN_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Memory for cached answers of deterministic requests, in MiB (0 disables the cache) [default: 64].
    #[arg(long, env = "KILN_CACHE_MIB")]
    pub cache_mib: Option<usize>,
    /// Seconds a cached answer is served before it is generated anew [default: 600].
    #[arg(long, env = "KILN_CACHE_TTL_SECS")]
    pub cache_ttl_secs: Option<u64>,
    /// Seconds a stream's client may read nothing while events wait before
    /// the stream is cancelled [default: 30].
    #[arg(long, env = "KILN_STREAM_STALL_SECS")]
    pub stream_stall_secs: Option<u64>,
    /// Connections open at once; past it a new one is answered 503 and closed [default: 1024].
    #[arg(long, env = "KILN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a request's head may take to arrive, from its first byte [default: 10].
    #[arg(long, env = "KILN_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Seconds a connection with no request in flight stays open [default: 60].
    #[arg(long, env = "KILN_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
}

/// `--admin`'s values, listed with their meaning in `--help`. `AdminAccess`
/// lives in kiln-access, which has no reason to depend on clap, so the
/// parser is built here from its names instead of a derived `ValueEnum`.
fn admin_parser() -> impl TypedValueParser<Value = AdminAccess> {
    let values = AdminAccess::ALL.map(|a| PossibleValue::new(a.name()).help(a.help()));
    // Clap has already refused every name but these, so the parse cannot fail.
    PossibleValuesParser::new(values).map(|name| name.parse::<AdminAccess>().expect("one of AdminAccess's names"))
}

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub host: String,
    pub port: u16,
}

pub fn listen(flags: &ServerFlags, file: &ServerSection) -> Listen {
    Listen {
        // Loopback unless asked: an unconfigured server is not reachable
        // from the network.
        host: pick(&flags.host, &file.host).unwrap_or_else(|| "127.0.0.1".into()),
        port: flags.port.or(file.port).unwrap_or(8000),
    }
}

/// Which model to load, and its name in the API.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    /// What `load::load` takes: the file (else the default model) and the
    /// context length.
    pub load: ModelArgs,
    /// `None`: named after the file it is loaded from ([`default_model_id`]),
    /// known only once the default model is fetched.
    pub id: Option<String>,
}

pub fn model(model: &ModelArgs, flags: &ServerFlags, file: &ServerSection) -> ModelSettings {
    ModelSettings {
        load: ModelArgs {
            model: pick(&model.model, &file.model),
            max_context: model.max_context.or(file.max_context),
            kv_cache_type: model.kv_cache_type.or(file.kv_cache_type),
            device: model.device,
            gpu_memory_fraction: model.gpu_memory_fraction,
        },
        id: pick(&flags.model_id, &file.model_id),
    }
}

/// A model's name in the API when none is set: its file name without `.gguf`.
pub fn default_model_id(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.strip_suffix(".gguf").unwrap_or(&name).to_string()
}

pub fn engine(flags: &ServerFlags, file: &ServerSection) -> EngineConfig {
    let defaults = EngineConfig::default();
    EngineConfig {
        max_batch: flags.max_batch.or(file.max_batch).unwrap_or(defaults.max_batch),
        max_queue: flags.max_queue.or(file.max_queue).unwrap_or(defaults.max_queue),
        prefix_cache_bytes: mib(flags.prefix_cache_mib, file.prefix_cache_mib, defaults.prefix_cache_bytes),
        kv_cache_bytes: mib(
            flags.kv_cache_mib,
            file.kv_cache_mib.map(std::num::NonZeroUsize::get),
            defaults.kv_cache_bytes,
        ),
        ..defaults
    }
}

/// The HTTP server's own settings; the rest of [`ServerConfig`] (keys,
/// limits, Redis) comes from the config file's other sections.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub max_body_bytes: usize,
    pub drain_timeout: Duration,
    /// How long `/ready` answers 503 before draining starts.
    pub drain_grace: Duration,
    pub request_timeout: Duration,
    pub cache: CacheConfig,
    pub admin: AdminAccess,
    pub public_metrics: bool,
    pub allowed_origins: Vec<String>,
    pub stream_stall: Duration,
    pub connections: ConnectionLimits,
}

pub fn server(flags: &ServerFlags, file: &ServerSection) -> ServerSettings {
    let defaults = ServerConfig::default();
    let cache = CacheConfig::default();
    ServerSettings {
        max_body_bytes: flags.max_body_bytes.or(file.max_body_bytes).unwrap_or(defaults.max_body_bytes),
        drain_timeout: secs(flags.drain_timeout_secs, file.drain_timeout_secs, defaults.drain_timeout),
        drain_grace: secs(flags.drain_grace_secs, file.drain_grace_secs, Duration::ZERO),
        // 0 would stop every generation before its first token.
        request_timeout: secs(flags.request_timeout_secs, file.request_timeout_secs, defaults.request_timeout)
            .max(Duration::from_secs(1)),
        cache: CacheConfig {
            max_bytes: mib(flags.cache_mib, file.cache_mib, cache.max_bytes),
            ttl: secs(flags.cache_ttl_secs, file.cache_ttl_secs, cache.ttl),
        },
        admin: flags.admin.or(file.admin).unwrap_or_default(),
        // No flag: who scrapes metrics is a deployment's standing choice.
        public_metrics: file.public_metrics.unwrap_or(defaults.public_metrics),
        // No flag: a deployment's standing list, like `public_metrics`.
        allowed_origins: file.allowed_origins.clone(),
        // 0 would cancel a stream at its first pause.
        stream_stall: secs(flags.stream_stall_secs, file.stream_stall_secs, defaults.stream_stall)
            .max(Duration::from_secs(1)),
        connections: ConnectionLimits {
            max_connections: flags
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults.connections.max_connections)
                .max(1),
            header_read_timeout: secs(
                flags.header_read_timeout_secs,
                file.header_read_timeout_secs,
                defaults.connections.header_read_timeout,
            )
            .max(Duration::from_secs(1)),
            idle_timeout: secs(flags.idle_timeout_secs, file.idle_timeout_secs, defaults.connections.idle_timeout)
                .max(Duration::from_secs(1)),
        },
    }
}

impl ServerSettings {
    /// The server's configuration. Keys, limits and Redis are arguments, not
    /// defaults, so no caller serves without keys by forgetting them.
    pub fn config(&self, auth: Auth, limits: kiln_access::Limits, redis: Option<RedisShared>) -> ServerConfig {
        ServerConfig {
            max_body_bytes: self.max_body_bytes,
            drain_timeout: self.drain_timeout,
            admin: self.admin,
            auth,
            limits,
            public_metrics: self.public_metrics,
            request_timeout: self.request_timeout,
            cache: self.cache,
            redis,
            allowed_origins: self.allowed_origins.clone(),
            stream_stall: self.stream_stall,
            connections: self.connections,
            ..ServerConfig::default()
        }
    }
}

/// Where async tasks are kept and what replicas share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stores {
    /// Set: rate limits and cached answers are shared through this Redis
    /// (as `[redis]` turns each on or off).
    pub redis_url: Option<String>,
    /// Tasks in Redis rather than SQLite: a Redis is set and `[redis] tasks`
    /// is not false.
    pub tasks_in_redis: bool,
    /// The SQLite task store; `None`: `tasks.sqlite3` in kiln's data folder,
    /// looked up only when it is needed (the lookup can fail).
    pub tasks_db: Option<PathBuf>,
}

pub fn stores(redis_url: Option<&str>, tasks_db: Option<&Path>, file: &FileConfig) -> Stores {
    let redis_url = redis_url.or(file.redis.url.as_deref()).map(str::to_string);
    Stores {
        tasks_in_redis: redis_url.is_some() && file.redis.tasks.unwrap_or(true),
        redis_url,
        tasks_db: tasks_db.map(Path::to_path_buf).or_else(|| file.tasks.path.clone()),
    }
}

/// The flag (or its variable), else the file's value.
fn pick<T: Clone>(flag: &Option<T>, file: &Option<T>) -> Option<T> {
    flag.as_ref().or(file.as_ref()).cloned()
}

/// Seconds from the flag, else the file, else `default`.
fn secs(flag: Option<u64>, file: Option<u64>, default: Duration) -> Duration {
    flag.or(file).map_or(default, Duration::from_secs)
}

/// Bytes from MiB set by the flag, else the file; else `default_bytes`.
/// An absurd size saturates (so it means "no practical limit") instead of
/// wrapping round to a small one.
fn mib(flag: Option<usize>, file: Option<usize>, default_bytes: usize) -> usize {
    flag.or(file).map_or(default_bytes, |m| m.saturating_mul(1 << 20))
}

#[cfg(test)]
mod tests {
    use kiln_model::KvType;

    use super::*;

    /// No model flag given.
    fn flags_none() -> ModelArgs {
        ModelArgs {
            model: None,
            max_context: None,
            kv_cache_type: None,
            device: kiln_cuda::DeviceRequest::Cpu,
            gpu_memory_fraction: kiln_cuda::budget::DEFAULT_MEMORY_FRACTION,
        }
    }

    /// Every flag set, to values no default or file below has.
    fn all_flags() -> ServerFlags {
        ServerFlags {
            host: Some("0.0.0.0".into()),
            port: Some(1),
            model_id: Some("flag-id".into()),
            max_batch: Some(2),
            max_queue: Some(3),
            max_body_bytes: Some(4),
            prefix_cache_mib: Some(5),
            drain_timeout_secs: Some(6),
            drain_grace_secs: Some(7),
            admin: Some(AdminAccess::Anyone),
            request_timeout_secs: Some(8),
            cache_mib: Some(9),
            cache_ttl_secs: Some(10),
            stream_stall_secs: Some(11),
            max_connections: Some(12),
            header_read_timeout_secs: Some(13),
            idle_timeout_secs: Some(14),
            kv_cache_mib: Some(15),
        }
    }

    /// Every `[server]` setting set, to values unlike the flags' and the defaults'.
    fn full_file() -> ServerSection {
        ServerSection {
            host: Some("10.0.0.1".into()),
            port: Some(101),
            model: Some("file.gguf".into()),
            model_id: Some("file-id".into()),
            max_context: Some(102),
            max_batch: Some(103),
            max_queue: Some(104),
            max_body_bytes: Some(105),
            prefix_cache_mib: Some(106),
            drain_timeout_secs: Some(107),
            drain_grace_secs: Some(108),
            request_timeout_secs: Some(109),
            cache_mib: Some(110),
            cache_ttl_secs: Some(111),
            admin: Some(AdminAccess::Nobody),
            public_metrics: Some(false),
            allowed_origins: vec!["https://app.example".into()],
            stream_stall_secs: Some(112),
            max_connections: Some(113),
            header_read_timeout_secs: Some(114),
            idle_timeout_secs: Some(115),
            kv_cache_mib: std::num::NonZeroUsize::new(116),
            kv_cache_type: Some(KvType::F32),
        }
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn listen_defaults_to_loopback_port_8000() {
        let listen = listen(&ServerFlags::default(), &ServerSection::default());
        assert_eq!(listen, Listen { host: "127.0.0.1".into(), port: 8000 });
    }

    #[test]
    fn listen_takes_the_flag_over_the_file_and_the_file_over_the_default() {
        assert_eq!(listen(&all_flags(), &full_file()), Listen { host: "0.0.0.0".into(), port: 1 });
        assert_eq!(listen(&ServerFlags::default(), &full_file()), Listen { host: "10.0.0.1".into(), port: 101 });
        // Each setting on its own: a flag for one leaves the other to the file.
        let flags = ServerFlags { port: Some(1), ..ServerFlags::default() };
        assert_eq!(listen(&flags, &full_file()), Listen { host: "10.0.0.1".into(), port: 1 });
    }

    #[test]
    fn model_takes_the_flag_over_the_file_and_leaves_unset_ones_to_the_loader() {
        let flags = ModelArgs {
            model: Some("flag.gguf".into()),
            max_context: Some(9),
            kv_cache_type: Some(KvType::F16),
            ..flags_none()
        };
        let m = model(&flags, &all_flags(), &full_file());
        assert_eq!(m.load.model.as_deref(), Some(Path::new("flag.gguf")));
        assert_eq!((m.load.max_context, m.load.kv_cache_type), (Some(9), Some(KvType::F16)));
        assert_eq!(m.id.as_deref(), Some("flag-id"));

        let none = flags_none();
        let m = model(&none, &ServerFlags::default(), &full_file());
        assert_eq!(m.load.model.as_deref(), Some(Path::new("file.gguf")));
        assert_eq!((m.load.max_context, m.load.kv_cache_type), (Some(102), Some(KvType::F32)));
        assert_eq!(m.id.as_deref(), Some("file-id"));

        let m = model(&none, &ServerFlags::default(), &ServerSection::default());
        assert_eq!((m.load.model, m.load.max_context, m.id), (None, None, None));
    }

    #[test]
    fn default_model_id_is_the_file_name_without_gguf() {
        assert_eq!(default_model_id(Path::new("/models/SmolLM2-135M.Q4_1.gguf")), "SmolLM2-135M.Q4_1");
        assert_eq!(default_model_id(Path::new("weights.bin")), "weights.bin");
    }

    #[test]
    fn engine_defaults_are_the_engines() {
        let config = engine(&ServerFlags::default(), &ServerSection::default());
        let defaults = EngineConfig::default();
        assert_eq!(config.max_batch, defaults.max_batch);
        assert_eq!(config.max_queue, defaults.max_queue);
        assert_eq!(config.prefix_cache_bytes, defaults.prefix_cache_bytes);
        assert_eq!(config.prefill_chunk, defaults.prefill_chunk);
        assert_eq!(config.kv_cache_bytes, defaults.kv_cache_bytes);
    }

    #[test]
    fn engine_takes_the_flag_over_the_file_with_the_prefix_cache_in_mib() {
        let config = engine(&all_flags(), &full_file());
        assert_eq!((config.max_batch, config.max_queue, config.prefix_cache_bytes), (2, 3, 5 * MIB));
        assert_eq!(config.kv_cache_bytes, 15 * MIB);
        let config = engine(&ServerFlags::default(), &full_file());
        assert_eq!((config.max_batch, config.max_queue, config.prefix_cache_bytes), (103, 104, 106 * MIB));
        assert_eq!(config.kv_cache_bytes, 116 * MIB);
    }

    #[test]
    fn a_prefix_cache_of_zero_mib_disables_it_even_over_the_file() {
        let flags = ServerFlags { prefix_cache_mib: Some(0), ..ServerFlags::default() };
        assert_eq!(engine(&flags, &full_file()).prefix_cache_bytes, 0);
    }

    #[test]
    fn server_defaults_are_the_servers() {
        let s = server(&ServerFlags::default(), &ServerSection::default());
        let defaults = ServerConfig::default();
        let cache = CacheConfig::default();
        assert_eq!(s.max_body_bytes, defaults.max_body_bytes);
        assert_eq!(s.drain_timeout, defaults.drain_timeout);
        assert_eq!(s.drain_grace, Duration::ZERO);
        assert_eq!(s.request_timeout, defaults.request_timeout);
        assert_eq!((s.cache.max_bytes, s.cache.ttl), (cache.max_bytes, cache.ttl));
        assert_eq!(s.admin, AdminAccess::Loopback);
        assert!(s.public_metrics);
        assert_eq!((s.stream_stall, s.connections), (defaults.stream_stall, defaults.connections));
    }

    #[test]
    fn server_takes_the_flag_over_the_file_in_bytes_and_seconds() {
        let s = server(&all_flags(), &full_file());
        assert_eq!(s.max_body_bytes, 4);
        assert_eq!(s.drain_timeout, Duration::from_secs(6));
        assert_eq!(s.drain_grace, Duration::from_secs(7));
        assert_eq!(s.request_timeout, Duration::from_secs(8));
        assert_eq!((s.cache.max_bytes, s.cache.ttl), (9 * MIB, Duration::from_secs(10)));
        assert_eq!(s.admin, AdminAccess::Anyone);
        assert_eq!(s.stream_stall, Duration::from_secs(11));
        let secs = Duration::from_secs;
        assert_eq!(
            s.connections,
            ConnectionLimits { max_connections: 12, header_read_timeout: secs(13), idle_timeout: secs(14) }
        );
        let s = server(&ServerFlags::default(), &full_file());
        assert_eq!(s.stream_stall, Duration::from_secs(112));
        assert_eq!(
            s.connections,
            ConnectionLimits { max_connections: 113, header_read_timeout: secs(114), idle_timeout: secs(115) }
        );
        let s = server(&all_flags(), &full_file());
        // No flag for these: the file decides.
        assert!(!s.public_metrics);
        assert_eq!(s.allowed_origins, ["https://app.example"]);
    }

    #[test]
    fn server_takes_the_file_over_the_default_in_bytes_and_seconds() {
        let s = server(&ServerFlags::default(), &full_file());
        assert_eq!(s.max_body_bytes, 105);
        assert_eq!(s.drain_timeout, Duration::from_secs(107));
        assert_eq!(s.drain_grace, Duration::from_secs(108));
        assert_eq!(s.request_timeout, Duration::from_secs(109));
        assert_eq!((s.cache.max_bytes, s.cache.ttl), (110 * MIB, Duration::from_secs(111)));
        assert_eq!(s.admin, AdminAccess::Nobody);
    }

    #[test]
    fn request_timeout_is_at_least_one_second() {
        let file = ServerSection { request_timeout_secs: Some(0), ..ServerSection::default() };
        assert_eq!(server(&ServerFlags::default(), &file).request_timeout, Duration::from_secs(1));
        // A flag of 0 still beats the file's 109 s, and is raised to the floor.
        let flags = ServerFlags { request_timeout_secs: Some(0), ..ServerFlags::default() };
        assert_eq!(server(&flags, &full_file()).request_timeout, Duration::from_secs(1));
    }

    #[test]
    fn a_cache_of_zero_mib_disables_it_and_an_absurd_one_saturates() {
        let flags = ServerFlags { cache_mib: Some(0), ..ServerFlags::default() };
        assert_eq!(server(&flags, &full_file()).cache.max_bytes, 0);
        let flags = ServerFlags { cache_mib: Some(usize::MAX >> 4), ..ServerFlags::default() };
        assert_eq!(server(&flags, &full_file()).cache.max_bytes, usize::MAX);
    }

    #[test]
    fn the_server_config_carries_the_settings_and_the_given_keys_and_limits() {
        let s = server(&all_flags(), &full_file());
        let limits = kiln_access::Limits { requests_per_minute: Some(5), tokens_per_minute: None };
        let config = s.config(Auth::Insecure, limits, None);
        assert_eq!(config.limits, limits);
        assert_eq!(config.max_body_bytes, 4);
        assert_eq!(config.drain_timeout, Duration::from_secs(6));
        assert_eq!(config.request_timeout, Duration::from_secs(8));
        assert_eq!(config.cache.max_bytes, 9 * MIB);
        assert_eq!(config.admin, AdminAccess::Anyone);
        assert!(!config.public_metrics);
        assert_eq!(config.allowed_origins, ["https://app.example"]);
        assert!(config.redis.is_none());
    }

    #[test]
    fn stores_take_the_flag_over_the_file_and_tasks_go_to_redis_unless_turned_off() {
        let file: FileConfig =
            toml::from_str("[redis]\nurl = \"redis://file/\"\n[tasks]\npath = \"file.sqlite3\"\n").unwrap();
        let s = stores(Some("redis://flag/"), Some(Path::new("flag.sqlite3")), &file);
        assert_eq!(s.redis_url.as_deref(), Some("redis://flag/"));
        assert_eq!(s.tasks_db.as_deref(), Some(Path::new("flag.sqlite3")));
        assert!(s.tasks_in_redis);
        let s = stores(None, None, &file);
        assert_eq!(s.redis_url.as_deref(), Some("redis://file/"));
        assert_eq!(s.tasks_db.as_deref(), Some(Path::new("file.sqlite3")));

        let off: FileConfig = toml::from_str("[redis]\nurl = \"redis://file/\"\ntasks = false\n").unwrap();
        assert!(!stores(None, None, &off).tasks_in_redis);
        let s = stores(None, None, &FileConfig::default());
        assert_eq!(s, Stores { redis_url: None, tasks_in_redis: false, tasks_db: None });
    }

    /// `kiln serve`'s flags alone, parsed as clap parses them.
    #[derive(clap::Parser, Debug)]
    struct Flags {
        #[command(flatten)]
        server: ServerFlags,
    }

    #[test]
    fn admin_flag_takes_the_config_files_names() {
        use clap::Parser as _;
        for access in AdminAccess::ALL {
            let flags = Flags::try_parse_from(["kiln", "--admin", access.name()]).unwrap();
            assert_eq!(flags.server.admin, Some(access));
        }
        let err = Flags::try_parse_from(["kiln", "--admin", "nobody"]).unwrap_err().to_string();
        assert!(["nobody", "loopback", "anyone", "none"].iter().all(|n| err.contains(n)), "{err}");
    }

    #[test]
    fn help_lists_the_admin_choices_and_what_they_mean() {
        use clap::CommandFactory as _;
        let help = Flags::command().render_long_help().to_string();
        for access in AdminAccess::ALL {
            assert!(help.contains(access.name()) && help.contains(access.help()), "{help}");
        }
    }
}
