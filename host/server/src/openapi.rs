//! The OpenAPI 3.1 document, generated from the wire types and handler
//! annotations, and the Swagger UI page that renders it. The UI's assets are
//! compiled into the binary (`utoipa-swagger-ui`'s `vendored` feature), so
//! `/docs` works with no internet access.

use std::collections::BTreeMap;

use axum::Router;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::contract::{Served, declare};
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
        routes::models::fingerprint,
        routes::tokenize::tokenize,
        routes::tokenize::detokenize,
        routes::plugins::list_plugins,
        routes::plugins::put_plugin,
        routes::plugins::reload_plugin,
        routes::plugins::promote_plugin,
        routes::plugins::rollback_plugin,
        routes::plugins::delete_plugin,
        routes::health::health,
        routes::health::ready,
        routes::metrics::metrics,
        routes::tasks::generate_async,
        routes::tasks::chat_completions_async,
        routes::tasks::get_task,
        routes::tasks::cancel_task,
        routes::tasks::delete_task,
        routes::tasks::list_tasks,
    ),
    components(schemas(kiln_api::generate::GenerationStreamEnd, kiln_api::ErrorBody)),
    tags(
        (name = "generate", description = "The guide's endpoints"),
        (name = "openai", description = "OpenAI-compatible API"),
        (name = "tokens", description = "Token counting"),
        (name = "plugins", description = "Plugin administration (admin clients only)"),
        (name = "probes", description = "Liveness and readiness"),
        (name = "tasks", description = "Async generation tasks, kept in a durable store"),
    )
)]
pub struct ApiDoc;

/// `/openapi.json`, with the served model's limits and the validation's
/// bounds declared ([`crate::contract`]), and the docs page at `/docs`.
pub(crate) fn docs_router<S: Clone + Send + Sync + 'static>(served: &Served) -> Router<S> {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the generated document serializes");
    declare(&mut doc, served);
    // Served as JSON: utoipa's model does not hold every keyword added
    // (`propertyNames`, an `enum` with `null`); the tests validate the result.
    SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", doc).into()
}

/// The failures every generating endpoint documents, all as `ErrorBody`.
#[derive(Debug)]
pub(crate) struct GenerationErrors;

impl IntoResponses for GenerationErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        [
            ("400", "Malformed JSON, a value out of range, an unknown model, a prompt over the context"),
            ("413", "Body over the size limit"),
            ("422", "A missing field or one of the wrong type (`param` names it)"),
            ("401", "No API key, or one that is not configured"),
            ("403", "The key lacks the scope"),
            ("429", "Over the key's requests or tokens per minute; retry after `Retry-After` seconds"),
            ("500", "A plugin failed (`code: plugin_error`, naming it), or a server fault"),
            ("503", "At capacity, warming up or draining; retry after `Retry-After` seconds"),
            ("504", "Ran past the request timeout (`code: timeout`); the generation was stopped"),
        ]
        .into_iter()
        .map(|(status, description)| {
            let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
            let response = ResponseBuilder::new().description(description).content("application/json", body).build();
            (status.to_string(), response.into())
        })
        .collect()
    }
}
