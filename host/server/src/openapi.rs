//! The OpenAPI 3.1 document, generated from the wire types and handler
//! annotations, and the Swagger UI page that renders it. The UI's assets are
//! compiled into the binary (`utoipa-swagger-ui`'s `vendored` feature), so
//! `/docs` works with no internet access.

use axum::Router;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::routes;

#[derive(OpenApi, Debug)]
#[openapi(
    info(
        title = "kiln",
        description = "LLM inference server: the guide's endpoints and the OpenAI-compatible API. \
            Errors are `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`."
    ),
    paths(
        routes::generate::generate,
        routes::generate::generate_stream,
        routes::chat::chat_completions,
        routes::completions::completions,
        routes::models::list_models,
        routes::models::retrieve_model,
        routes::tokenize::tokenize,
        routes::tokenize::detokenize,
    ),
    components(schemas(kiln_api::generate::GenerateStreamEnd)),
    tags(
        (name = "generate", description = "The guide's endpoints"),
        (name = "openai", description = "OpenAI-compatible API"),
        (name = "tokens", description = "Token counting"),
    )
)]
pub struct ApiDoc;

/// `/openapi.json` and the docs page at `/docs`.
pub fn docs_router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()).into()
}
