//! Bearer-token authentication, as a tonic interceptor in front of the Scoring and reflection
//! services. It also stamps each request with its arrival time, from which handlers compute the
//! request's deadline (`grpc-timeout` counts from arrival, not from when a handler gets to run).

use std::sync::Arc;
use std::time::Instant;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::config::Tokens;

/// When a request reached the server (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub Instant);

/// Checks `authorization: Bearer <token>` against the configured tokens (no tokens: every
/// request passes) and stamps [`Arrival`].
#[derive(Clone)]
pub struct Auth {
    tokens: Arc<Tokens>,
}

impl Auth {
    pub fn new(tokens: Tokens) -> Auth {
        Auth {
            tokens: Arc::new(tokens),
        }
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.extensions_mut().insert(Arrival(Instant::now()));
        if self.tokens.is_empty() {
            return Ok(req);
        }
        let Some(value) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            ));
        };
        let value = value.as_bytes();
        let token = match value.split_at_checked(7) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => token,
            _ => {
                return Err(Status::unauthenticated(
                    "`authorization` metadata is not `Bearer <token>`",
                ))
            }
        };
        if !self.tokens.accepts(token) {
            return Err(Status::unauthenticated("invalid bearer token"));
        }
        Ok(req)
    }
}
