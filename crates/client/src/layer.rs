//! [`RequireAuth`]: a `tower::Layer` that lets a request through only with a valid access token
//! (and the scopes asked for), putting its [`Principal`] in the request's extensions; otherwise it
//! answers 401 or 403 with an RFC 6750 `WWW-Authenticate` challenge, or 503 when the issuer has
//! never been reachable.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, StatusCode, header};
use portcullis_core::bearer::Challenge;
use portcullis_core::principal::Principal;
use tower::{Layer, Service};

use crate::{Error, Verifier};

/// Requires a valid access token with every scope in [`RequireAuth::scopes`].
#[derive(Clone)]
pub struct RequireAuth {
    verifier: Verifier,
    scopes: Arc<[String]>,
}

impl RequireAuth {
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            scopes: Arc::from(Vec::new()),
        }
    }

    /// Scopes every request must carry, all of them.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }
}

impl<S> Layer<S> for RequireAuth {
    type Service = RequireAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireAuthService {
            inner,
            verifier: self.verifier.clone(),
            scopes: Arc::clone(&self.scopes),
        }
    }
}

#[derive(Clone)]
pub struct RequireAuthService<S> {
    inner: S,
    verifier: Verifier,
    scopes: Arc<[String]>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireAuthService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready is the one that serves; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        let scopes = Arc::clone(&self.scopes);
        Box::pin(async move {
            let checked = match verifier.authenticate(req.headers()).await {
                Ok(p) => {
                    let missing: Vec<&str> = scopes
                        .iter()
                        .map(String::as_str)
                        .filter(|s| !p.scopes.contains(s))
                        .collect();
                    if missing.is_empty() {
                        Ok(p)
                    } else {
                        Err(Error::InsufficientScope(scopes.join(" ")))
                    }
                }
                Err(e) => Err(e),
            };
            match checked {
                Ok(p) => {
                    req.extensions_mut().insert(Principal::clone(&p));
                    inner.call(req).await
                }
                Err(e) => Ok(refusal(&e, verifier.config().resource_metadata.as_deref())),
            }
        })
    }
}

/// The 401 / 403 / 503 answer for `e`, with an empty body.
pub fn refusal<B: Default>(e: &Error, resource_metadata: Option<&str>) -> Response<B> {
    let description;
    let (status, error, scope) = match e {
        Error::Missing => (StatusCode::UNAUTHORIZED, None, None),
        Error::InvalidRequest(why) => (
            StatusCode::UNAUTHORIZED,
            Some(("invalid_request", *why)),
            None,
        ),
        Error::InsufficientScope(scope) => (
            StatusCode::FORBIDDEN,
            Some((
                "insufficient_scope",
                "the access token lacks a scope this request needs",
            )),
            Some(scope.as_str()),
        ),
        Error::InvalidToken(why) => {
            description = format!("the access token is not valid: {why}");
            (
                StatusCode::UNAUTHORIZED,
                Some(("invalid_token", description.as_str())),
                None,
            )
        }
        Error::Unavailable(_) | Error::Config(_) => {
            let mut r = Response::new(B::default());
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        }
    };
    let challenge = Challenge {
        realm: None,
        error,
        scope,
        resource_metadata,
    }
    .render();
    let mut r = Response::new(B::default());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::try_from(challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}
