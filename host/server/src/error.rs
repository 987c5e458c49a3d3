//! The one place where failures become HTTP statuses and JSON bodies.
//!
//! Every endpoint answers errors in OpenAI's envelope
//! (`{"error": {"message", "type", "param", "code"}}`). Client mistakes name
//! the field at fault; server faults are logged in full and reported to the
//! client without internals.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_api::{ErrorBody, ErrorDetail};
use kiln_engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all.
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// JSON of the wrong shape: a missing field or a wrong type.
    #[error("{message}")]
    InvalidType { param: Option<String>, message: String },
    /// A well-formed value kiln cannot accept.
    #[error("{message}")]
    InvalidValue { param: String, message: String, code: Option<&'static str> },
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the model `{0}` does not exist; see GET /v1/models")]
    ModelNotFound(String),
    /// A model looked up by path (`GET /v1/models/{id}`): a missing resource.
    #[error("the model `{0}` does not exist; see GET /v1/models")]
    NoSuchModel(String),
    #[error("no such endpoint: {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the server is at capacity ({queued} requests queued); retry shortly")]
    Overloaded { queued: usize },
    /// Refused before it ran: the work ahead would keep it past its deadline.
    #[error("{message}; retry in {} s", retry_after.as_secs())]
    Behind { message: String, retry_after: Duration },
    #[error("the engine has stopped; the server is shutting down")]
    Unavailable,
    #[error("the server has {limit} connections open, its limit; retry shortly")]
    TooManyConnections { limit: usize },
    /// Every pooled plugin instance is in use.
    #[error("{0}; retry shortly")]
    PluginsBusy(String),
    #[error("no plugin is named {0:?}; see GET /v1/plugins")]
    NoSuchPlugin(String),
    #[error("no task {0:?} for this API key")]
    NoSuchTask(String),
    #[error("this server has not served fingerprint {0:?}")]
    NoSuchFingerprint(String),
    /// The key's own tasks fill its share of the task queue.
    #[error("this API key has {limit} tasks waiting, the most it may; retry once some have started")]
    TooManyPendingTasks { limit: u64 },
    /// The task queue is full, all keys together.
    #[error("the task queue is full ({limit} tasks waiting); retry shortly")]
    TaskQueueFull { limit: u64 },
    /// An uploaded or reloaded component that cannot serve (not a kiln
    /// plugin, the wrong kind for a pipeline using the name, a failing smoke call).
    #[error("{0}")]
    InvalidPlugin(String),
    /// A change the server's state forbids (removing a plugin a pipeline needs).
    #[error("{0}")]
    Conflict(String),
    /// A key this endpoint's scope is not given to (or an admin endpoint
    /// from a client that is not an admin).
    #[error("{0}")]
    Forbidden(String),
    /// No API key, or one that is not configured.
    #[error("{0}")]
    Unauthorized(String),
    #[error("rate limit reached for {which} per minute; retry in {retry_after:?}")]
    RateLimited { which: &'static str, retry_after: std::time::Duration },
    /// The generation ran past the request timeout and was stopped.
    #[error("the request ran past the server's time limit of {limit:?} and was stopped")]
    Timeout { limit: std::time::Duration },
    /// Not ready to serve yet (warming up) or any more (draining).
    #[error("{0}")]
    NotReady(String),
    /// A plugin failed (trap, time or memory limit, bad output): the message
    /// names the plugin and its version, and is safe to show.
    #[error("{0}")]
    Plugin(String),
    /// A fault on kiln's side; the detail goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidValue { param: param.into(), message: message.into(), code: None }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::InvalidValue { .. } | ApiError::ModelNotFound(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::InvalidType { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RouteNotFound { .. }
            | ApiError::NoSuchModel(_)
            | ApiError::NoSuchPlugin(_)
            | ApiError::NoSuchTask(_)
            | ApiError::NoSuchFingerprint(_) => StatusCode::NOT_FOUND,
            ApiError::InvalidPlugin(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited { .. } | ApiError::TooManyPendingTasks { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Overloaded { .. }
            | ApiError::Behind { .. }
            | ApiError::Unavailable
            | ApiError::TaskQueueFull { .. }
            | ApiError::TooManyConnections { .. }
            | ApiError::PluginsBusy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) | ApiError::Plugin(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body; also sent as the last event of a stream that fails midway.
    pub fn body(&self) -> ErrorBody {
        let (kind, param, code) = match self {
            ApiError::MalformedJson(_) => ("invalid_request_error", None, Some("invalid_json")),
            ApiError::InvalidType { param, .. } => ("invalid_request_error", param.clone(), Some("invalid_type")),
            ApiError::InvalidValue { param, code, .. } => {
                ("invalid_request_error", Some(param.clone()), Some(code.unwrap_or("invalid_value")))
            }
            ApiError::PayloadTooLarge { .. } => ("invalid_request_error", None, Some("payload_too_large")),
            ApiError::ModelNotFound(_) => ("invalid_request_error", Some("model".into()), Some("model_not_found")),
            ApiError::RouteNotFound { .. } => ("not_found_error", None, Some("not_found")),
            ApiError::NoSuchModel(_) => ("not_found_error", Some("id".into()), Some("model_not_found")),
            ApiError::NoSuchFingerprint(_) => ("not_found_error", Some("fingerprint".into()), Some("not_found")),
            ApiError::MethodNotAllowed { .. } => ("invalid_request_error", None, Some("method_not_allowed")),
            ApiError::Overloaded { .. } | ApiError::Behind { .. } => ("overloaded_error", None, Some("overloaded")),
            ApiError::Unavailable => ("overloaded_error", None, Some("unavailable")),
            ApiError::TooManyConnections { .. } => ("overloaded_error", None, Some("too_many_connections")),
            ApiError::PluginsBusy(_) => ("overloaded_error", None, Some("overloaded")),
            ApiError::NoSuchPlugin(_) => ("not_found_error", Some("name".into()), Some("plugin_not_found")),
            ApiError::NoSuchTask(_) => ("not_found_error", Some("id".into()), Some("task_not_found")),
            ApiError::TooManyPendingTasks { .. } => ("rate_limit_error", None, Some("too_many_pending_tasks")),
            ApiError::TaskQueueFull { .. } => ("overloaded_error", None, Some("task_queue_full")),
            ApiError::InvalidPlugin(_) => ("invalid_request_error", None, Some("invalid_plugin")),
            ApiError::Conflict(_) => ("invalid_request_error", None, Some("conflict")),
            ApiError::Forbidden(_) => ("permission_error", None, Some("forbidden")),
            ApiError::Unauthorized(_) => ("authentication_error", None, Some("invalid_api_key")),
            ApiError::RateLimited { .. } => ("rate_limit_error", None, Some("rate_limit_exceeded")),
            ApiError::NotReady(_) => ("overloaded_error", None, Some("not_ready")),
            ApiError::Timeout { .. } => ("timeout_error", None, Some("timeout")),
            ApiError::Internal(_) => ("server_error", None, None),
            ApiError::Plugin(_) => ("server_error", None, Some("plugin_error")),
        };
        let message = match self {
            ApiError::Internal(_) => "the server failed to process the request; the details are in its log".into(),
            other => other.to_string(),
        };
        ErrorBody { error: ErrorDetail { message, kind: kind.into(), param, code: code.map(str::to_string) } }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Validation { field, message } => {
                ApiError::InvalidValue { message: format!("invalid `{field}`: {message}"), param: field, code: None }
            }
            e @ EngineError::PromptTooLong { .. } => ApiError::InvalidValue {
                param: "prompt".into(),
                message: e.to_string(),
                // OpenAI's clients look for this code to tell a too-long prompt apart.
                code: Some("context_length_exceeded"),
            },
            EngineError::Overloaded { queued } => ApiError::Overloaded { queued },
            e @ EngineError::WouldMissDeadline { eta, time_left } => ApiError::Behind {
                message: e.to_string(),
                // About when the backlog will have shrunk enough.
                retry_after: eta.saturating_sub(time_left).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            },
            EngineError::Stopped => ApiError::Unavailable,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, %status, "request failed");
        } else {
            tracing::debug!(error = %self, %status, "request refused");
        }
        let retry_after = match &self {
            ApiError::RateLimited { retry_after, .. } | ApiError::Behind { retry_after, .. } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            // A task queue drains at generation speed: seconds, not a moment.
            ApiError::TooManyPendingTasks { .. } | ApiError::TaskQueueFull { .. } => Some(5),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        };
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<kiln_pipeline::PipelineError> for ApiError {
    fn from(e: kiln_pipeline::PipelineError) -> Self {
        use kiln_pipeline::PipelineError as P;
        match e {
            e @ P::UnknownPipeline { .. } => ApiError::InvalidValue {
                param: "pipeline".into(),
                message: e.to_string(),
                code: Some("pipeline_not_found"),
            },
            P::UnknownPlugin(name) => ApiError::NoSuchPlugin(name),
            P::InvalidName(message) => ApiError::invalid("name", message),
            e
            @ (P::WrongKind { .. } | P::LoadFailed { .. } | P::Plugin(kiln_pipeline::PluginError::Invalid { .. })) => {
                ApiError::InvalidPlugin(e.to_string())
            }
            e @ (P::Conflict(_) | P::NoPluginDir) => ApiError::Conflict(e.to_string()),
            P::Plugin(e) => e.into(),
            e @ (P::Config(_) | P::Io(_)) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<kiln_pipeline::PluginError> for ApiError {
    /// A plugin's failure is the server's (500, naming the plugin), except a
    /// pool with no free instance: overload, retried shortly (503).
    fn from(e: kiln_pipeline::PluginError) -> Self {
        match e {
            e @ kiln_pipeline::PluginError::Busy { .. } => ApiError::PluginsBusy(e.to_string()),
            e => ApiError::Plugin(e.to_string()),
        }
    }
}
