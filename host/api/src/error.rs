//! The one error shape every endpoint answers with (OpenAI's).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"error": {...}}`: OpenAI's error envelope, used by every kiln endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, for a person.
    pub message: String,
    /// `invalid_request_error`, `not_found_error`, `overloaded_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, when there is one (`messages[0].content`).
    pub param: Option<String>,
    /// A stable machine-readable code (`model_not_found`, `context_length_exceeded`, ...).
    pub code: Option<String>,
}
