//! The application as the server calls it: any tower `Service` of
//! [`Body`] requests, behind one boxed handler so that the server's code
//! is not generic over it.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tower_service::Service;
use tracing::warn;

use crate::body::Body;

/// An error of the application's, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the server writes back: the application's body, boxed.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// The application, called once per request.
pub type Handler = Arc<
    dyn Fn(Request<Body>) -> Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>
        + Send
        + Sync,
>;

/// An application: a tower `Service` of [`Body`] requests that can be
/// cloned and shared across threads, whose response body yields [`Bytes`].
/// Implemented for every such service; an axum `Router` is one.
///
/// Each request is answered by a clone of the service, once it is ready; an
/// error from it is logged and answered 500.
pub trait App:
    Service<
        Request<Body>,
        Response = Response<Self::ResponseBody>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
    /// The body of the application's responses.
    type ResponseBody: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> App for S
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type ResponseBody = B;
}

/// Wraps `service` as the server calls it (see [`App`]).
pub fn handler<S: App>(service: S) -> Handler {
    Arc::new(move |req| {
        let mut service = service.clone();
        Box::pin(async move {
            let ready = poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(Into::into);
            let called = match ready {
                Ok(()) => service.call(req).await.map_err(Into::into),
                Err(e) => Err(e),
            };
            match called {
                Ok(response) => response.map(|body| body.map_err(Into::into).boxed_unsync()),
                Err(e) => {
                    warn!(cause = %e, "the application failed a request; answered 500");
                    let mut response = Response::new(
                        Full::new(Bytes::from_static(b"internal server error\n"))
                            .map_err(|never| match never {})
                            .boxed_unsync(),
                    );
                    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    response
                }
            }
        })
    })
}
