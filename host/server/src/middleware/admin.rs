//! Who may use the admin endpoints (plugin management). With API keys, a key
//! with the `admin` scope (unless `--admin none` turns them off). Without
//! keys (`--insecure-no-auth`), the choice is by network: loopback clients
//! that did not come through a proxy (the default), anyone (an explicit
//! operator choice), or no one.

use std::net::SocketAddr;

use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::{ApiError, AppState};

// One type for the command line, the config file and this check.
pub use kiln_access::AdminAccess;

/// Refuses admin requests from clients `AdminAccess` does not allow.
pub async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Result<Response, ApiError> {
    let extensions = request.extensions();
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        // What tests put in place of a connection.
        .or_else(|| extensions.get::<MockConnectInfo<SocketAddr>>().map(|c| c.0));
    // A reverse proxy on this machine makes every client look local: a
    // forwarded request is not a local one.
    let forwarded = ["forwarded", "x-forwarded-for", "x-real-ip"].iter().any(|h| request.headers().contains_key(*h));
    let keyed = matches!(state.config().auth, crate::config::Auth::Keys(_));
    match (state.config().admin, peer) {
        (AdminAccess::Nobody, _) => Err(ApiError::Forbidden("the admin endpoints are turned off (see --admin)".into())),
        // With API keys, the `admin` scope decides (authentication checked it
        // by path; this checks it again where the admin routes are).
        (_, _) if keyed => {
            let admin = request
                .extensions()
                .get::<crate::extract::Caller>()
                .and_then(|c| c.key.as_ref())
                .is_some_and(|k| k.allows(kiln_access::Scope::Admin));
            if admin {
                Ok(next.run(request).await)
            } else {
                Err(ApiError::Forbidden("plugin administration needs a key with the `admin` scope".into()))
            }
        }
        (AdminAccess::Anyone, _) => Ok(next.run(request).await),
        (AdminAccess::Loopback, Some(peer)) if peer.ip().to_canonical().is_loopback() && !forwarded => {
            Ok(next.run(request).await)
        }
        (AdminAccess::Loopback, _) => {
            Err(ApiError::Forbidden("the admin endpoints answer loopback clients only (see --admin)".into()))
        }
    }
}
