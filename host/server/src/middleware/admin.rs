//! Who may use the admin endpoints (plugin management), one rule: `--admin`
//! chooses by network (loopback clients that did not come through a proxy,
//! the default; anyone, an explicit operator choice; or no one), and with
//! API keys the key must have the `admin` scope as well.

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
    let local = peer.is_some_and(|p| p.ip().to_canonical().is_loopback()) && !forwarded;
    // With API keys, the `admin` scope as well (authentication checked it by
    // path; this checks it again where the admin routes are).
    let keyed = matches!(state.config().auth, crate::config::Auth::Keys(_));
    let admin_key = request
        .extensions()
        .get::<crate::extract::Caller>()
        .and_then(|c| c.key.as_ref())
        .is_some_and(|k| k.allows(kiln_access::Scope::Admin));
    match state.config().admin {
        AdminAccess::Nobody => Err(ApiError::Forbidden("the admin endpoints are turned off (see --admin)".into())),
        AdminAccess::Loopback if !local => {
            Err(ApiError::Forbidden("the admin endpoints answer loopback clients only (see --admin)".into()))
        }
        _ if keyed && !admin_key => {
            Err(ApiError::Forbidden("plugin administration needs a key with the `admin` scope".into()))
        }
        AdminAccess::Loopback | AdminAccess::Anyone => Ok(next.run(request).await),
    }
}
