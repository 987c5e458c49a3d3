//! Answers for routes and methods the API does not have, in the JSON
//! error envelope like every other answer.

use axum::http::{Method, Uri};

use crate::ApiError;

pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound { method: method.to_string(), path: uri.path().to_string() }
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_string() }
}
