//! The request pipeline: one request, from its head to its relayed response, in named
//! phases run in order, the same for HTTP/1.1, HTTP/2 and HTTP/3 (after pingora's
//! `ProxyHttp`, run by its `process_request`). [`pipeline`] runs them:
//!
//! 1. [`early`]: limits, `Host`, framing look-alikes;
//! 2. [`builtin`]: what the proxy answers itself (the redirect listener; later the sign-in
//!    callback and JWKS);
//! 3. [`route`]: the route for the host and path;
//! 4. [`authn`]: who the request is from (the connection's verified client certificate;
//!    later JWTs and sessions);
//! 5. [`authz`]: whether it may pass (the mTLS default deny; later the route's policy);
//! 6. [`pick`]: the upstream endpoint. Upgrades leave here, after authorization and the
//!    pick, for [`crate::proxy::tunnel`];
//! 7. [`send`]: the upstream request under its timeouts (the place retries wrap);
//! 8. [`response`]: the response headers, the error page, the body that enforces the
//!    stream timeouts;
//! 9. log: the request's [`crate::proxy::log::RequestLog`], written once: when the response
//!    body or the tunnel ends, or when the request is dropped first (499; 503 when the proxy
//!    closed the connection).

pub mod authn;
pub mod authz;
pub mod builtin;
pub mod early;
pub mod jwt;
pub mod pick;
pub mod pipeline;
pub mod response;
pub mod route;
pub mod send;

pub use pipeline::handle;
