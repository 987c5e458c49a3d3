//! The OpenAPI document and the offline docs page.

use axum::http::StatusCode;

use super::{TestApp, get};

#[tokio::test]
async fn openapi_is_3_1_and_documents_every_endpoint_with_its_schemas() {
    let app = TestApp::real().build();
    let doc = get(&app, "/openapi.json").await.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/generate",
        "/v1/generate/stream",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{id}",
        "/v1/tokenize",
        "/v1/detokenize",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in ["GenerationRequest", "ChatCompletionRequest", "ChatCompletionChunk", "ErrorBody", "Usage"] {
        assert!(schemas.contains_key(schema), "{schema} is missing");
    }
    for path in ["/v1/generate", "/v1/chat/completions", "/v1/completions"] {
        let responses = doc["paths"][path]["post"]["responses"].as_object().unwrap();
        for status in ["200", "400", "413", "422", "503"] {
            assert!(responses.contains_key(status), "{path} does not document {status}");
        }
        let error = &responses["422"]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(error, "#/components/schemas/ErrorBody");
    }
    let generate = &schemas["GenerationRequest"]["properties"];
    assert_eq!(generate["max_tokens"]["default"], 512);
}

#[tokio::test]
async fn the_document_declares_what_the_validation_enforces() {
    let app = TestApp::real().build();
    let doc = get(&app, "/openapi.json").await.json();
    let schemas = &doc["components"]["schemas"];
    let chat = &schemas["ChatCompletionRequest"]["properties"];
    assert_eq!(chat["model"]["enum"][0], app.state.model().id.as_str(), "only the served model");
    assert_eq!(chat["max_tokens"]["maximum"], super::CONTEXT, "the context window");
    assert_eq!(chat["top_logprobs"]["maximum"], kiln_engine::MAX_TOP_LOGPROBS);
    assert_eq!((chat["n"]["minimum"].as_u64(), chat["n"]["maximum"].as_u64()), (Some(1), Some(8)));
    assert_eq!(chat["temperature"]["maximum"], 2.0);
    assert_eq!(chat["seed"]["maximum"], i64::MAX, "u64 fields as the server bounds them, no int64 format");
    assert_eq!(chat["top_k"]["maximum"], u32::MAX);
    assert_eq!(chat["messages"]["minItems"], 1);
    assert_eq!(schemas["ChatMessage"]["properties"]["role"]["enum"].as_array().unwrap().len(), 5);
    let stop = &schemas["StopSequences"]["oneOf"];
    assert_eq!(stop[1]["maxItems"], kiln_stop::MAX_STOP_STRINGS);
    assert_eq!(stop[0]["maxLength"], crate::request::MAX_STOP_CHARS);
    let limit = &doc["paths"]["/v1/tasks"]["get"]["parameters"][1]["schema"];
    assert_eq!((limit["minimum"].as_u64(), limit["maximum"].as_u64()), (Some(1), Some(100)));
    let name = &doc["paths"]["/v1/plugins/{name}"]["put"]["parameters"][0]["schema"];
    assert_eq!(name["pattern"], kiln_pipeline::NAME_PATTERN);
}

#[tokio::test]
async fn the_docs_page_and_its_assets_are_served_without_a_cdn() {
    let app = TestApp::real().build();
    let page = get(&app, "/docs/").await;
    assert_eq!(page.status, StatusCode::OK);
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("https://") && !html.contains("http://"), "the page loads nothing from the internet");
    for asset in ["swagger-ui.css", "swagger-ui-bundle.js", "swagger-initializer.js"] {
        let answer = get(&app, &format!("/docs/{asset}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{asset}");
        assert!(answer.body.len() > 100, "{asset}");
    }
    let init = get(&app, "/docs/swagger-initializer.js").await;
    assert!(String::from_utf8_lossy(&init.body).contains("/openapi.json"));
}
