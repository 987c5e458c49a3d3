//! The production layer's front door: API keys and scopes, per-key rate
//! limits, request ids, and the probes.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use kiln_access::{KeyConfig, KeyStore, Limits, Scope, hash_key};
use serde_json::json;

use super::*;
use crate::{Auth, ServerConfig};

pub(super) const APP_KEY: &str = "kiln-app-key";
pub(super) const OPS_KEY: &str = "kiln-ops-key";
const SMALL_KEY: &str = "kiln-small-key";

pub(super) fn key(name: &str, key: &str, scope: Scope, requests_per_minute: Option<u32>) -> KeyConfig {
    KeyConfig {
        name: name.into(),
        sha256: hash_key(key),
        scopes: vec![scope],
        requests_per_minute,
        tokens_per_minute: None,
        pipelines: Vec::new(),
        pipeline: None,
        webhook_secret: None,
    }
}

pub(super) fn keyed_config(limits: Limits) -> ServerConfig {
    let keys = KeyStore::new(vec![
        key("app", APP_KEY, Scope::Generate, None),
        key("ops", OPS_KEY, Scope::Admin, None),
        key("small", SMALL_KEY, Scope::Generate, Some(5)),
    ])
    .unwrap();
    ServerConfig { auth: Auth::keys(keys), limits, ..ServerConfig::default() }
}

/// Requests come from this machine, as the admin endpoints want by default.
fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:50000".parse().unwrap()
}

fn keyed_app(limits: Limits) -> Built {
    TestApp::fake(Fake::Say(vec!["Hello", " there"])).config(keyed_config(limits)).peer(loopback()).build()
}

fn generate(key: Option<(&str, &str)>) -> Request<Body> {
    let mut request = Request::post("/v1/generate").header("content-type", "application/json");
    if let Some((header, value)) = key {
        request = request.header(header, value);
    }
    request.body(Body::from(json!({"prompt": "Hi", "max_tokens": 2}).to_string())).unwrap()
}

#[tokio::test]
async fn requests_without_a_valid_key_get_401() {
    let app = keyed_app(Limits::default());
    let missing = send(&app, generate(None)).await;
    assert_eq!(missing.error(StatusCode::UNAUTHORIZED)["code"], "invalid_api_key");
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
    let wrong = send(&app, generate(Some(("authorization", "Bearer kiln-guess")))).await;
    wrong.error(StatusCode::UNAUTHORIZED);
    // The configured digest is not a key.
    let digest = format!("Bearer {}", hash_key(APP_KEY));
    send(&app, generate(Some(("authorization", &digest)))).await.error(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_key_works_in_either_header() {
    let app = keyed_app(Limits::default());
    let bearer = format!("Bearer {APP_KEY}");
    assert_eq!(send(&app, generate(Some(("authorization", &bearer)))).await.status, StatusCode::OK);
    assert_eq!(send(&app, generate(Some(("x-api-key", APP_KEY)))).await.status, StatusCode::OK);
}

#[tokio::test]
async fn plugin_administration_needs_the_admin_scope() {
    let app = keyed_app(Limits::default());
    let list = |key: &str| Request::get("/v1/plugins").header("x-api-key", key).body(Body::empty()).unwrap();
    let refused = send(&app, list(APP_KEY)).await.error(StatusCode::FORBIDDEN);
    assert!(refused["message"].as_str().unwrap().contains("admin"), "{refused}");
    // An admin key passes authentication; this server has no plugins to list.
    assert_eq!(send(&app, list(OPS_KEY)).await.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn with_keys_the_admin_endpoints_want_the_admin_scope_and_the_network_admin_allows() {
    let list = || Request::get("/v1/plugins").header("x-api-key", OPS_KEY).body(Body::empty()).unwrap();
    let remote: std::net::SocketAddr = "192.0.2.7:40000".parse().unwrap();
    // `--admin loopback` (the default): an admin key from elsewhere is refused.
    let app = TestApp::fake(Fake::Say(vec!["x"])).config(keyed_config(Limits::default())).peer(remote).build();
    let refused = send(&app, list()).await.error(StatusCode::FORBIDDEN);
    assert!(refused["message"].as_str().unwrap().contains("loopback"), "{refused}");
    // Through a proxy on this machine is not local either.
    let app = keyed_app(Limits::default());
    let proxied = Request::get("/v1/plugins").header("x-api-key", OPS_KEY).header("x-forwarded-for", "192.0.2.7");
    send(&app, proxied.body(Body::empty()).unwrap()).await.error(StatusCode::FORBIDDEN);
    // `--admin anyone`: the scope alone decides.
    let anyone = ServerConfig { admin: crate::AdminAccess::Anyone, ..keyed_config(Limits::default()) };
    let app = TestApp::fake(Fake::Say(vec!["x"])).config(anyone).peer(remote).build();
    assert_eq!(send(&app, list()).await.status, StatusCode::CONFLICT, "admitted; no plugins to list");
    let app_key = Request::get("/v1/plugins").header("x-api-key", APP_KEY).body(Body::empty()).unwrap();
    send(&app, app_key).await.error(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_metrics_key_scrapes_metrics_and_nothing_else() {
    const SCRAPER_KEY: &str = "kiln-scraper-key";
    let mut config = keyed_config(Limits::default());
    config.public_metrics = false;
    let Auth::Keys(keys) = &config.auth else { unreachable!("keyed") };
    let mut configs: Vec<KeyConfig> = keys.current().keys().iter().map(|k| k.config.clone()).collect();
    configs.push(KeyConfig { scopes: vec![Scope::Metrics], ..key("scraper", SCRAPER_KEY, Scope::Metrics, None) });
    config.auth = Auth::keys(KeyStore::new(configs).unwrap());
    let app = TestApp::fake(Fake::Say(vec!["x"])).config(config).peer(loopback()).build();
    let call = |path: &str, key: &str| Request::get(path).header("x-api-key", key).body(Body::empty()).unwrap();
    assert_eq!(send(&app, call("/metrics", SCRAPER_KEY)).await.status, StatusCode::OK);
    assert_eq!(send(&app, call("/metrics", OPS_KEY)).await.status, StatusCode::OK, "admin includes metrics");
    send(&app, call("/metrics", APP_KEY)).await.error(StatusCode::FORBIDDEN);
    send(&app, call("/v1/plugins", SCRAPER_KEY)).await.error(StatusCode::FORBIDDEN);
    send(&app, generate(Some(("x-api-key", SCRAPER_KEY)))).await.error(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn probes_and_docs_need_no_key() {
    let app = keyed_app(Limits::default());
    for path in ["/health", "/openapi.json", "/docs/"] {
        assert_ne!(get(&app, path).await.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let health = get(&app, "/health").await;
    assert_eq!(health.status, StatusCode::OK);
    let health = health.json();
    assert_eq!((health["status"].as_str(), health["model_loaded"].as_bool()), (Some("ok"), Some(true)));
    assert_eq!(health["gpu_available"], false);
    assert_eq!(health["device"], "cpu");
    assert!(health["gpu_name"].is_null());
    assert!(health["kv_cache_bytes"].is_u64() && health["prefix_cache_bytes"].is_u64(), "{health}");
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_a_sane_client_id_is_kept() {
    let app = keyed_app(Limits::default());
    let answer = get(&app, "/health").await;
    assert_eq!(answer.headers["x-request-id"].len(), 32);
    let mine = Request::get("/health").header("x-request-id", "trace-42").body(Body::empty()).unwrap();
    assert_eq!(send(&app, mine).await.headers["x-request-id"], "trace-42");
    let junk = Request::get("/nope").header("x-request-id", "a b").body(Body::empty()).unwrap();
    assert_ne!(send(&app, junk).await.headers["x-request-id"], "a b");
}

#[tokio::test]
async fn limited_answers_carry_openais_rate_limit_headers_and_429_past_the_limit() {
    let app = keyed_app(Limits::default());
    for remaining in (0..5).rev() {
        let ok = send(&app, generate(Some(("x-api-key", SMALL_KEY)))).await;
        assert_eq!(ok.status, StatusCode::OK);
        assert_eq!(ok.headers["x-ratelimit-limit-requests"], "5");
        assert_eq!(ok.headers["x-ratelimit-remaining-requests"], remaining.to_string().as_str());
        assert!(ok.headers.contains_key("x-ratelimit-reset-requests"));
    }
    let limited = send(&app, generate(Some(("x-api-key", SMALL_KEY)))).await;
    let error = limited.error(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error["code"], "rate_limit_exceeded");
    let retry: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "{retry}");
    assert_eq!(limited.headers["x-ratelimit-remaining-requests"], "0");
}

#[tokio::test]
async fn one_key_flooding_past_its_limit_leaves_another_key_untouched() {
    let app = keyed_app(Limits::default());
    let flood = (0..50).map(|_| send(&app, generate(Some(("x-api-key", SMALL_KEY)))));
    let steady = (0..20).map(|_| send(&app, generate(Some(("x-api-key", APP_KEY)))));
    let (flood, steady) = tokio::join!(futures_util::future::join_all(flood), futures_util::future::join_all(steady));
    let limited = flood.iter().filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!(limited, 45, "10x the limit of 5: all but 5 refused");
    assert!(steady.iter().all(|a| a.status == StatusCode::OK), "the other key saw errors");
}

#[tokio::test]
async fn tokens_are_reserved_before_and_counted_when_a_generation_ends() {
    // Each fake answer uses 3 tokens (1 prompt, 2 generated, as the fake
    // reports), but reserves its real prompt plus max_tokens while it runs.
    let app = keyed_app(Limits { requests_per_minute: None, tokens_per_minute: Some(60) });
    let remaining = |a: &Answer| a.headers["x-ratelimit-remaining-tokens"].to_str().unwrap().parse::<u32>().unwrap();
    let first = send(&app, generate(Some(("x-api-key", APP_KEY)))).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["x-ratelimit-limit-tokens"], "60");
    let second = send(&app, generate(Some(("x-api-key", APP_KEY)))).await;
    // What was reserved beyond the 3 used came back.
    assert_eq!(remaining(&first) - remaining(&second), 3);
    // A request that cannot fit its reservation waits, though tokens are left.
    let body = json!({"prompt": "Hi", "max_tokens": 500}).to_string();
    let big = Request::post("/v1/generate").header("x-api-key", APP_KEY).body(Body::from(body)).unwrap();
    let refused = send(&app, big).await;
    assert!(refused.error(StatusCode::TOO_MANY_REQUESTS)["message"].as_str().unwrap().contains("tokens"));
}

#[tokio::test]
async fn ready_only_after_the_warm_up_and_not_while_draining() {
    let app = TestApp::real().build();
    let state = app.state.clone();
    assert_eq!(get(&app, "/ready").await.error(StatusCode::SERVICE_UNAVAILABLE)["code"], "not_ready");
    state.warm_up().await.unwrap();
    assert_eq!(get(&app, "/ready").await.status, StatusCode::OK);
    state.start_draining();
    get(&app, "/ready").await.error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(&app, "/health").await.json()["status"], "draining");
}

#[tokio::test]
async fn without_keys_web_pages_cannot_drive_the_server_but_listed_origins_can() {
    let app = TestApp::fake(Fake::Say(vec!["x"])).build();
    let call = |headers: &[(&str, &str)]| {
        let mut request = Request::post("/v1/generate");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(Body::from(json!({"prompt": "Hi"}).to_string())).unwrap()
    };
    // Clients that are not browsers: no Origin, a loopback or IP Host.
    for host in ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "10.1.2.3:8000"] {
        assert_eq!(send(&app, call(&[("host", host)])).await.status, StatusCode::OK, "{host}");
    }
    // DNS rebinding: a page's own name resolving to this machine.
    let rebound = send(&app, call(&[("host", "evil.example:8000")])).await;
    assert!(rebound.error(StatusCode::FORBIDDEN)["message"].as_str().unwrap().contains("DNS rebinding"));
    // A cross-site form post (text/plain needs no preflight).
    let cross = [("host", "127.0.0.1:8000"), ("origin", "https://evil.example"), ("content-type", "text/plain")];
    send(&app, call(&cross)).await.error(StatusCode::FORBIDDEN);
    send(&app, call(&[("host", "127.0.0.1:8000"), ("sec-fetch-site", "cross-site")]))
        .await
        .error(StatusCode::FORBIDDEN);
    // The server's own pages (/docs) call it from its origin.
    let same = [("host", "127.0.0.1:8000"), ("origin", "http://127.0.0.1:8000"), ("sec-fetch-site", "same-origin")];
    assert_eq!(send(&app, call(&same)).await.status, StatusCode::OK);

    // A listed origin may, and gets CORS (its preflight too).
    let config = ServerConfig { allowed_origins: vec!["https://app.example".into()], ..ServerConfig::default() };
    let app = TestApp::fake(Fake::Say(vec!["x"])).config(config).build();
    let listed = [("host", "127.0.0.1:8000"), ("origin", "https://app.example"), ("sec-fetch-site", "cross-site")];
    let answer = send(&app, call(&listed)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["access-control-allow-origin"], "https://app.example");
    let preflight = Request::options("/v1/generate")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .body(Body::empty())
        .unwrap();
    let answer = send(&app, preflight).await;
    assert!(answer.status.is_success(), "{}", answer.status);
    assert_eq!(answer.headers["access-control-allow-origin"], "https://app.example");
    send(&app, call(&[("host", "127.0.0.1:8000"), ("origin", "https://evil.example")]))
        .await
        .error(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn with_keys_the_key_decides_whatever_the_host() {
    let app = keyed_app(Limits::default());
    let request = Request::post("/v1/generate")
        .header("host", "kiln.internal.example")
        .header("x-api-key", APP_KEY)
        .body(Body::from(json!({"prompt": "Hi"}).to_string()))
        .unwrap();
    assert_eq!(send(&app, request).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_key_revoked_by_a_reload_is_refused_from_then_on() {
    let config = keyed_config(Limits::default());
    let Auth::Keys(live) = config.auth.clone() else { unreachable!("keyed") };
    let app = TestApp::fake(Fake::Say(vec!["x"])).config(config).build();
    let call = |key: &str| Request::get("/v1/models").header("x-api-key", key).body(Body::empty()).unwrap();
    assert_eq!(send(&app, call(OPS_KEY)).await.status, StatusCode::OK);
    // The reload keeps "app" and drops "ops".
    live.replace(KeyStore::new(vec![key("app", APP_KEY, Scope::Generate, None)]).unwrap());
    assert_eq!(send(&app, call(OPS_KEY)).await.error(StatusCode::UNAUTHORIZED)["code"], "invalid_api_key");
    assert_eq!(send(&app, call(APP_KEY)).await.status, StatusCode::OK);
}
