//! `POST /v1/tokenize` and `POST /v1/detokenize`.

use axum::Json;
use axum::extract::State;
use kiln_api::ErrorBody;
use kiln_api::tokenize::{DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse};

use super::chat::chat_messages;
use crate::extract::ApiJson;
use crate::{ApiError, AppState};

/// Count a prompt's tokens: either `prompt` as is, or `messages` rendered with
/// the chat template exactly as a chat completion would be.
#[utoipa::path(post, path = "/v1/tokenize", tag = "tokens", request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn tokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let text = match (req.prompt, req.messages) {
        (Some(prompt), None) => prompt,
        (None, Some(messages)) => state.render_chat(&chat_messages(messages)?, req.add_generation_prompt)?,
        _ => return Err(ApiError::invalid("prompt", "give exactly one of `prompt` and `messages`")),
    };
    let tokens = state.encode(&text)?;
    Ok(Json(TokenizeResponse {
        count: tokens.len() as u32,
        tokens,
        max_model_len: state.backend().limits().max_context as u32,
    }))
}

/// Turn token ids back into text (special tokens included).
#[utoipa::path(post, path = "/v1/detokenize", tag = "tokens", request_body = DetokenizeRequest,
    responses((status = 200, body = DetokenizeResponse), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn detokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let vocab = state.backend().limits().vocab_size;
    if let Some((i, id)) = req.tokens.iter().enumerate().find(|(_, id)| **id as usize >= vocab) {
        return Err(ApiError::invalid(format!("tokens[{i}]"), format!("{id} is outside the vocabulary ({vocab})")));
    }
    let prompt = state
        .model()
        .tokenizer
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::Internal(format!("tokenizer: {e}")))?;
    Ok(Json(DetokenizeResponse { prompt }))
}
