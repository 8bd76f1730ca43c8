//! Bearer-token guard for the admin (mutating) routes; read routes stay open.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::state::AppState;

/// Present in a handler's arguments = the request carried the configured admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(token) = state.admin_token.as_deref() else {
            return Err(ApiError::AdminDisabled);
        };
        let given = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Constant time in the token's content (the length is not secret).
        if bool::from(given.as_bytes().ct_eq(token.as_bytes())) { Ok(Admin) } else { Err(ApiError::Unauthorized) }
    }
}
