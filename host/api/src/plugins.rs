//! The plugin admin API: `GET /v1/plugins` and the answers of
//! `PUT`/`POST .../reload`/`DELETE /v1/plugins/{name}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every plugin and pipeline of the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PluginList {
    pub plugins: Vec<PluginStatus>,
    pub pipelines: Vec<PipelineView>,
    /// The pipeline of requests that name none.
    pub default_pipeline: String,
}

/// One plugin name: the version serving it, where it came from, how its
/// last load went, and its calls since that version was loaded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PluginStatus {
    pub name: String,
    /// `template`, `sampler` or `post-process` (absent: no version ever loaded).
    pub kind: Option<String>,
    /// The version the plugin reports (its crate version).
    pub version: Option<String>,
    pub description: Option<String>,
    /// Hex sha256 of the serving component file.
    pub sha256: Option<String>,
    /// The plugin contract (`wit/`) version the component was built
    /// against: `0.2.0`, or `0.1.0` (served through the host's adapter).
    pub contract: Option<String>,
    /// `built-in`, `file` or `upload`.
    pub source: String,
    /// The plugin's file, for `source: file`.
    pub path: Option<String>,
    /// Unix time the serving version was loaded.
    pub loaded_at: u64,
    /// `ok`, or `error` when the latest new version failed to load (the
    /// previous one keeps serving) or none ever loaded.
    pub status: String,
    pub last_error: Option<String>,
    /// Unix time of `last_error`.
    pub last_error_at: Option<u64>,
    /// Versions swapped in since the first.
    pub reloads: u64,
    /// New versions refused since start (each refused file once).
    pub failed_reloads: u64,
    pub metrics: PluginCallStats,
}

/// Calls into the serving version (instantiations included).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PluginCallStats {
    pub calls: u64,
    /// Traps, timeouts, memory-limit hits and refusals.
    pub errors: u64,
    pub mean_latency_us: f64,
    pub max_latency_us: f64,
}

/// A named pipeline: plugin names per stage (absent: the host's own).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PipelineView {
    pub name: String,
    pub template: Option<String>,
    pub sampler: Option<String>,
    pub post: Vec<String>,
}
