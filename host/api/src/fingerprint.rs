//! `GET /v1/fingerprints/{fingerprint}`: what an answer's
//! `system_fingerprint` stands for.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The model and the plugin versions (with their configuration) that
/// produced answers carrying `fingerprint`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FingerprintView {
    /// `fp_` and 16 hex digits.
    pub fingerprint: String,
    pub model: FingerprintModel,
    /// In the order they run: the pipeline's template, sampler and
    /// post-processors, then the built-ins the request used
    /// (`json-mode`, `json-schema`, `tool-calls`).
    pub plugins: Vec<FingerprintPlugin>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FingerprintModel {
    pub id: String,
    /// Hex sha256 of the model file.
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FingerprintPlugin {
    pub name: String,
    pub version: String,
    /// `template`, `sampler` or `post-process`.
    pub kind: String,
    pub sha256: String,
    /// Hex sha256 of its configuration in the pipeline (canonical JSON of
    /// the key/value pairs): configuration may hold what only operators
    /// should read.
    pub config_sha256: String,
}
