//! `GET /v1/models`, `GET /v1/models/{id}`, and what served answers'
//! fingerprints stand for (`GET /v1/fingerprints/{fingerprint}`).

use axum::Json;
use axum::extract::State;
use kiln_api::ErrorBody;
use kiln_api::fingerprint::FingerprintView;
use kiln_api::openai::{ModelCard, ModelList};

use crate::extract::ApiPath;
use crate::{ApiError, AppState};

/// The served model (kiln serves one model per process).
#[utoipa::path(get, path = "/v1/models", tag = "openai", responses((status = 200, description = "The served model", body = ModelList)))]
pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList { object: "list".into(), data: vec![card(&state)] })
}

/// One model by id.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "openai",
    params(("id" = String, Path, description = "The model's id")),
    responses((status = 200, description = "The model", body = ModelCard), (status = 404, description = "No such model", body = ErrorBody)))]
pub async fn retrieve_model(State(state): State<AppState>, ApiPath(id): ApiPath) -> Result<Json<ModelCard>, ApiError> {
    if id != state.model().id {
        return Err(ApiError::NoSuchModel(id));
    }
    Ok(Json(card(&state)))
}

/// The model file and plugin versions an answer's `system_fingerprint` (or
/// `x-kiln-fingerprint`) stands for, known for every fingerprint this
/// server has served.
#[utoipa::path(get, path = "/v1/fingerprints/{fingerprint}", tag = "openai",
    params(("fingerprint" = String, Path, description = "An answer's `system_fingerprint`")),
    responses((status = 200, description = "What it stands for", body = FingerprintView),
        (status = 404, description = "Not served by this server", body = ErrorBody)))]
pub async fn fingerprint(
    State(state): State<AppState>,
    ApiPath(fingerprint): ApiPath,
) -> Result<Json<FingerprintView>, ApiError> {
    match state.fingerprints().get(&fingerprint) {
        Some(view) => Ok(Json((*view).clone())),
        None => Err(ApiError::NoSuchFingerprint(fingerprint)),
    }
}

fn card(state: &AppState) -> ModelCard {
    let model = state.model();
    ModelCard {
        id: model.id.clone(),
        object: "model".into(),
        created: model.created,
        owned_by: "kiln".into(),
        max_model_len: state.backend().limits().max_context as u32,
    }
}
