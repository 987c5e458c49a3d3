//! The one place where failures become HTTP statuses and JSON bodies.
//!
//! Every endpoint answers errors in OpenAI's envelope
//! (`{"error": {"message", "type", "param", "code"}}`). Client mistakes name
//! the field at fault; server faults are logged in full and reported to the
//! client without internals.

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
    #[error("the engine has stopped; the server is shutting down")]
    Unavailable,
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
            ApiError::RouteNotFound { .. } | ApiError::NoSuchModel(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Overloaded { .. } | ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
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
            ApiError::MethodNotAllowed { .. } => ("invalid_request_error", None, Some("method_not_allowed")),
            ApiError::Overloaded { .. } => ("overloaded_error", None, Some("overloaded")),
            ApiError::Unavailable => ("overloaded_error", None, Some("unavailable")),
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
        let mut response = (status, axum::Json(self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
