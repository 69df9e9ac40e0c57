//! HTTP/1.1 connections that hold no codec while they rest: a keep-alive connection with no
//! request for [`REST_AFTER`] hands hyper's connection (its 8 KiB read and 8 KiB write
//! buffers, its dispatcher) back and keeps only the socket, as nginx and HAProxy free their
//! buffers between requests; the next request's first bytes build a new one.
//!
//! hyper has no call to release its buffers, but it does end an idle HTTP/1 connection on
//! `graceful_shutdown` and, when the IO wrapper skips the shutdown ([`ConnState::resting`]),
//! gives the socket and any bytes it had read but not parsed back (`into_parts`). A connection
//! is put to rest only when nothing of a message is in flight: no request active, no byte of
//! the next head read, and hyper's write buffer flushed ([`ConnState::flushed`]); hyper ends
//! a connection only at a message boundary, so the next codec starts where the last stopped.
//! Upgrades stay hyper's (`with_upgrades`): a tunnel holds its request active, so its
//! connection never rests.
//!
//! Plain listeners also take HTTP/2 with prior knowledge: the first bytes decide, as
//! hyper-util's auto server does (the 24-byte preface), and an HTTP/2 connection is served
//! as it is.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::driver::{Ended, Served};
use crate::proxy::body::{instant_at_ms, now_ms, ProxyBody, Stalled};
use crate::proxy::conn::ConnState;
use crate::proxy::stall::{StreamExecutor, Watched};

/// How long an HTTP/1.1 connection stays without a request before it rests. Not zero: a
/// client sending requests back to back (microseconds apart) would build a codec per
/// request. Not long either: every connection that arrived in the last `REST_AFTER` still
/// holds its codec, so when thousands arrive together the codecs alive at once, and the
/// memory the allocator keeps after they are freed (mimalloc hands it back only on later
/// activity), grow with it: at 250 ms an idle HTTP/1.1 connection cost 9.2 KiB in the
/// `idle-h1` benchmark against 4.8 KiB when they arrived slowly (bench/findings.md).
pub(crate) const REST_AFTER: Duration = Duration::from_millis(50);

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Read bytes handed back to the reader before the socket's own (what hyper had read but
/// not parsed when it ended, and the bytes that woke a resting connection).
pub(crate) struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    fn new(inner: T) -> Self {
        Self { prefix: Bytes::new(), inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What one step of a hyper connection gives: its poll, with its error as text.
type Step = Poll<Result<Result<(), String>, Stalled>>;

/// What the rest logic asks of an HTTP/1.1 connection.
enum Op<'a, 'b> {
    Poll(&'a mut Context<'b>),
    GracefulShutdown,
    /// After it ended: the socket and the bytes read but not parsed (`None`: upgraded).
    IntoParts,
}

enum Out<T> {
    Step(Step),
    Done,
    Parts(Option<(Rewind<T>, Bytes)>),
}

/// A hyper connection behind a closure, as `tcp::Hyper` holds one: the compiler proves
/// `Send` for a closure from what it captures, where a struct generic over hyper's
/// connection types makes it re-prove their `Future` impls under erased lifetimes, which it
/// cannot (rust-lang/rust#64552).
type Http1<T> = Box<dyn FnMut(Op<'_, '_>) -> Out<T> + Send>;
/// Builds an HTTP/1.1 connection on a socket.
type MakeHttp1<T> = Box<dyn Fn(Rewind<T>) -> Http1<T> + Send>;
/// An HTTP/2 connection: polls it (`Some(cx)`) or begins its graceful shutdown (`None`).
type Http2 = Box<dyn FnMut(Option<&mut Context<'_>>) -> Step + Send>;
type MakeHttp2<T> = Box<dyn FnOnce(Rewind<T>) -> Http2 + Send>;

enum Phase<T> {
    /// No codec: waiting for the first bytes of the next request (or of the connection).
    Waiting(Rewind<T>),
    Http1(Http1<T>),
    Http2(Http2),
    /// Closed by the idle timeout while it rested: the socket's shutdown (TLS close_notify).
    Closing(Rewind<T>),
    Gone,
}

/// An HTTP/1.1 connection (or, on a plain listener, either protocol) as the driver serves
/// it, resting while idle.
pub(crate) struct Resting<T> {
    phase: Phase<T>,
    http1: MakeHttp1<T>,
    /// Set until the first bytes decided the protocol (plain listeners only).
    detect: Option<MakeHttp2<T>>,
    state: Arc<ConnState>,
    /// Wakes an idle connection when it is due to rest (armed lazily, see `poll_rest`).
    timer: Option<Pin<Box<Sleep>>>,
    closing: bool,
}

impl<T> Resting<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Serves `io` with `service`; `detect`: the HTTP/2 server to use if the client sends
    /// the preface.
    pub(crate) fn new<S>(
        io: T,
        http1: http1::Builder,
        detect: Option<http2::Builder<StreamExecutor>>,
        service: S,
        state: Arc<ConnState>,
    ) -> Self
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let svc = service.clone();
        let make_http1: MakeHttp1<T> = Box::new(move |io| {
            let conn = http1.serve_connection(TokioIo::new(io), svc.clone()).with_upgrades();
            let mut conn = Some(Box::pin(Watched::new(conn)));
            Box::new(move |op| match op {
                Op::Poll(cx) => match conn.as_mut() {
                    Some(c) => Out::Step(c.as_mut().poll(cx).map(|r| r.map(|r| r.map_err(|e| e.to_string())))),
                    None => Out::Done,
                },
                Op::GracefulShutdown => {
                    if let Some(c) = conn.as_mut() {
                        c.as_mut().inner().graceful_shutdown();
                    }
                    Out::Done
                }
                Op::IntoParts => Out::Parts(conn.take().and_then(|c| {
                    let parts = Pin::into_inner(c).into_inner().into_parts()?;
                    Some((parts.io.into_inner(), parts.read_buf))
                })),
            })
        });
        let make_http2 = detect.map(|builder| -> MakeHttp2<T> {
            Box::new(move |io| {
                let mut conn = Box::pin(Watched::unwatched(builder.serve_connection(TokioIo::new(io), service)));
                Box::new(move |cx| {
                    if let Some(cx) = cx {
                        conn.as_mut().poll(cx).map(|r| r.map(|r| r.map_err(|e| e.to_string())))
                    } else {
                        conn.as_mut().inner().graceful_shutdown();
                        Poll::Pending
                    }
                })
            })
        });
        Self {
            phase: Phase::Waiting(Rewind::new(io)),
            http1: make_http1,
            detect: make_http2,
            state,
            timer: None,
            closing: false,
        }
    }

    fn start_http1(&mut self, io: Rewind<T>) {
        self.phase = Phase::Http1((self.http1)(io));
    }

    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        loop {
            match &mut self.phase {
                Phase::Waiting(io) => {
                    if self.closing {
                        let Phase::Waiting(io) = std::mem::replace(&mut self.phase, Phase::Gone) else {
                            unreachable!()
                        };
                        self.phase = Phase::Closing(io);
                        continue;
                    }
                    // Read into the stack: a resting connection holds no buffer.
                    let mut buf = [0u8; 2048];
                    let mut read = ReadBuf::new(&mut buf);
                    if let Err(e) = std::task::ready!(Pin::new(&mut io.inner).poll_read(cx, &mut read)) {
                        return Poll::Ready(Ended::Failed(e.to_string()));
                    }
                    let got = read.filled();
                    let eof = got.is_empty();
                    if eof && io.prefix.is_empty() {
                        return Poll::Ready(Ended::Done);
                    }
                    io.prefix = if io.prefix.is_empty() {
                        Bytes::copy_from_slice(got)
                    } else {
                        [&io.prefix[..], got].concat().into()
                    };
                    let h2 = self.detect.is_some() && io.prefix.starts_with(PREFACE);
                    // Still a prefix of the preface: read on (hyper-util does the same).
                    if self.detect.is_some() && !h2 && !eof && PREFACE.starts_with(&io.prefix) {
                        continue;
                    }
                    let Phase::Waiting(io) = std::mem::replace(&mut self.phase, Phase::Gone) else { unreachable!() };
                    match self.detect.take() {
                        Some(make) if h2 => self.phase = Phase::Http2(make(io)),
                        _ => self.start_http1(io),
                    }
                }
                Phase::Http2(conn) => return conn(Some(cx)).map(|r| self.ended(r)),
                Phase::Closing(io) => {
                    let _ = std::task::ready!(Pin::new(io).poll_shutdown(cx));
                    return Poll::Ready(Ended::Done);
                }
                Phase::Gone => return Poll::Ready(Ended::Done),
                Phase::Http1(conn) => {
                    let Out::Step(step) = conn(Op::Poll(cx)) else { return Poll::Ready(Ended::Done) };
                    if let Poll::Ready(r) = step {
                        let resting = self.state.resting.swap(false, Ordering::AcqRel);
                        if !matches!(r, Ok(Ok(()))) || !resting {
                            return Poll::Ready(self.ended(r));
                        }
                        // `None`: upgraded (the tunnel has the socket; it holds a request
                        // active, so this cannot follow a rest, but hyper decides).
                        let Out::Parts(Some((mut io, read_buf))) = conn(Op::IntoParts) else {
                            return Poll::Ready(Ended::Done);
                        };
                        self.phase = Phase::Gone;
                        if !read_buf.is_empty() {
                            io.prefix = if io.prefix.is_empty() {
                                read_buf
                            } else {
                                [&read_buf[..], &io.prefix[..]].concat().into()
                            };
                        }
                        self.timer = None;
                        if self.closing {
                            self.phase = Phase::Closing(io);
                        } else if io.prefix.is_empty() {
                            self.phase = Phase::Waiting(io);
                        } else {
                            // The next request had begun arriving: serve it at once, and
                            // count it as pending (its header timeout runs, and it is not put
                            // to rest again before it is a request).
                            let _ = self.state.pending_since.compare_exchange(
                                0,
                                now_ms().max(1),
                                Ordering::AcqRel,
                                Ordering::Relaxed,
                            );
                            self.start_http1(io);
                        }
                        continue;
                    }
                    if self.closing || self.poll_rest(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Due: hyper closes an idle connection at once on a graceful shutdown,
                    // and the IO wrapper leaves the socket open.
                    self.state.resting.store(true, Ordering::Release);
                    if let Phase::Http1(conn) = &mut self.phase {
                        conn(Op::GracefulShutdown);
                    }
                }
            }
        }
    }

    /// Ready when the HTTP/1.1 connection is idle and due to rest. The timer is re-armed
    /// only after it fired, so requests do not touch it: a busy connection wakes once per
    /// [`REST_AFTER`] at most.
    fn poll_rest(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let s = &self.state;
            if s.active.load(Ordering::Acquire) != 0
                || s.pending_since.load(Ordering::Acquire) != 0
                || !s.flushed.load(Ordering::Acquire)
            {
                return Poll::Pending;
            }
            // A timer that has not fired yet is due no later than the rest (it was armed for
            // an earlier idle start) and is registered already: nothing to look at, so a
            // request pays three loads here and no clock read.
            if self.timer.as_ref().is_some_and(|t| !t.is_elapsed()) {
                return Poll::Pending;
            }
            let due = s.idle_since.load(Ordering::Acquire) + REST_AFTER.as_millis() as u64;
            if now_ms() >= due {
                return Poll::Ready(());
            }
            let at = instant_at_ms(due);
            let timer = match &mut self.timer {
                Some(t) => {
                    t.as_mut().reset(at);
                    t
                }
                None => self.timer.insert(Box::pin(tokio::time::sleep_until(at))),
            };
            // Registers it; ready only if it fired at once (then look again).
            std::task::ready!(timer.as_mut().poll(cx));
        }
    }

    fn ended(&self, r: Result<Result<(), String>, Stalled>) -> Ended {
        match r {
            Ok(Ok(())) => Ended::Done,
            // The IO wrapper failed the connection after its ENHANCE_YOUR_CALM GOAWAY.
            Ok(Err(_)) if self.state.abort.load(Ordering::Acquire) => Ended::Aborted,
            Ok(Err(e)) => Ended::Failed(e),
            Err(reason) => Ended::Stalled(reason),
        }
    }
}

impl<T> Served for Resting<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn serve(&mut self) -> impl std::future::Future<Output = Ended> + Send + '_ {
        std::future::poll_fn(|cx| self.poll_serve(cx))
    }

    fn begin_close(&mut self, drain: bool) -> impl std::future::Future<Output = ()> + Send + '_ {
        match &mut self.phase {
            Phase::Http2(conn) => {
                let _ = conn(None);
            }
            // A drained HTTP/1.1 connection ends with its next response (`Connection:
            // close`): shutting it down now could close it under a request already on the
            // wire. A resting one is closed by the driver's linger.
            _ if drain => {}
            Phase::Http1(conn) => {
                self.closing = true;
                conn(Op::GracefulShutdown);
            }
            _ => self.closing = true,
        }
        std::future::ready(())
    }

    fn is_h1(&self) -> bool {
        true
    }

    fn label(&self) -> &'static str {
        "connection"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::accept::io::Metered;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    /// A server that answers every request with its path, on the IO wrapper the listeners use.
    fn server(io: DuplexStream, detect: bool) -> (Resting<Metered<DuplexStream>>, Arc<ConnState>) {
        let state = ConnState::new();
        let svc_state = state.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let state = svc_state.clone();
            async move {
                let (guard, _) = state.begin_request();
                let body = crate::proxy::body::full(req.uri().path().to_owned());
                drop(guard);
                Ok::<_, Infallible>(Response::new(body))
            }
        });
        let h2 = detect.then(|| http2::Builder::new(StreamExecutor));
        (Resting::new(Metered::new(io, state.clone()), http1::Builder::new(), h2, service, state.clone()), state)
    }

    fn phase<T>(r: &Resting<T>) -> &'static str {
        match r.phase {
            Phase::Waiting(_) => "waiting",
            Phase::Http1(_) => "http1",
            Phase::Http2(_) => "http2",
            Phase::Closing(_) => "closing",
            Phase::Gone => "gone",
        }
    }

    /// Runs the server while `client` runs, as the driver does (the serve future is dropped
    /// after each event).
    async fn with<T, F: std::future::Future<Output = T>>(served: &mut Resting<Metered<DuplexStream>>, client: F) -> T {
        tokio::select! {
            ended = served.serve() => panic!("the connection ended: {}", match ended { Ended::Failed(e) => e, _ => "other".into() }),
            out = client => out,
        }
    }

    /// Reads until `n` responses (each ending with its body, the path) have arrived.
    async fn responses(c: &mut DuplexStream, paths: &[&str]) -> String {
        let mut got = String::new();
        let mut buf = [0u8; 4096];
        while !paths.iter().all(|p| got.contains(&format!("\r\n\r\n{p}"))) {
            let n = c.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "closed; got {got:?}");
            got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        got
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n")
    }

    #[tokio::test]
    async fn an_idle_connection_rests_without_its_codec_and_serves_the_next_request() {
        let (mut c, s) = tokio::io::duplex(64 * 1024);
        let (mut served, state) = server(s, true);
        assert_eq!(phase(&served), "waiting", "no codec before the first byte");
        with(&mut served, async {
            c.write_all(get("/one").as_bytes()).await.unwrap();
            responses(&mut c, &["/one"]).await
        })
        .await;
        assert_eq!(phase(&served), "http1");
        with(&mut served, tokio::time::sleep(REST_AFTER / 5)).await;
        assert_eq!(phase(&served), "http1", "not before REST_AFTER");
        with(&mut served, tokio::time::sleep(REST_AFTER * 2)).await;
        assert_eq!(phase(&served), "waiting", "rested");
        assert!(!state.resting.load(Ordering::Acquire), "the socket is shut down again when hyper ends");
        let got = with(&mut served, async {
            c.write_all(get("/two").as_bytes()).await.unwrap();
            responses(&mut c, &["/two"]).await
        })
        .await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(!got.to_ascii_lowercase().contains("connection: close"), "{got}");
        assert_eq!(phase(&served), "http1");
    }

    #[tokio::test]
    async fn bytes_hyper_read_but_did_not_parse_survive_a_rest() {
        let (mut c, s) = tokio::io::duplex(64 * 1024);
        let (mut served, _state) = server(s, false);
        // One write: a whole request and the start of the next; the rest of it comes after
        // the connection was due to rest.
        with(&mut served, async {
            c.write_all(format!("{}GET /two HT", get("/one")).as_bytes()).await.unwrap();
            responses(&mut c, &["/one"]).await
        })
        .await;
        with(&mut served, tokio::time::sleep(REST_AFTER * 2)).await;
        let got = with(&mut served, async {
            c.write_all(b"TP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
            responses(&mut c, &["/two"]).await
        })
        .await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    }

    #[tokio::test]
    async fn a_head_arriving_slowly_keeps_its_codec() {
        let (mut c, s) = tokio::io::duplex(64 * 1024);
        let (mut served, _state) = server(s, false);
        with(&mut served, async {
            c.write_all(get("/one").as_bytes()).await.unwrap();
            responses(&mut c, &["/one"]).await;
            c.write_all(b"GET /two HTTP/1.1\r\n").await.unwrap();
            tokio::time::sleep(REST_AFTER * 2).await;
        })
        .await;
        assert_eq!(phase(&served), "http1", "a head in progress is not put to rest");
        let got = with(&mut served, async {
            c.write_all(b"Host: a\r\n\r\n").await.unwrap();
            responses(&mut c, &["/two"]).await
        })
        .await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    }

    #[tokio::test]
    async fn the_preface_decides_http2_on_a_plain_listener_even_when_it_arrives_in_pieces() {
        let (mut c, s) = tokio::io::duplex(64 * 1024);
        let (mut served, _state) = server(s, true);
        with(&mut served, async {
            c.write_all(&PREFACE[..5]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        })
        .await;
        assert_eq!(phase(&served), "waiting", "5 bytes of the preface decide nothing");
        with(&mut served, async {
            c.write_all(&PREFACE[5..]).await.unwrap();
            // The server's SETTINGS frame: type 4 in the fourth byte.
            let mut head = [0u8; 9];
            c.read_exact(&mut head).await.unwrap();
            assert_eq!(head[3], 4, "{head:?}");
        })
        .await;
        assert_eq!(phase(&served), "http2");
    }

    #[tokio::test]
    async fn a_resting_connection_closes_when_the_client_does() {
        let (mut c, s) = tokio::io::duplex(64 * 1024);
        let (mut served, _state) = server(s, false);
        with(&mut served, async {
            c.write_all(get("/one").as_bytes()).await.unwrap();
            responses(&mut c, &["/one"]).await
        })
        .await;
        with(&mut served, tokio::time::sleep(REST_AFTER * 2)).await;
        assert_eq!(phase(&served), "waiting");
        drop(c);
        assert!(matches!(served.serve().await, Ended::Done));
    }
}
