//! A minimal HTTP/1.1 keep-alive client connection on top of `hyper::client::conn::http1`.
//!
//! The connection future is driven inside the task that issues requests (no extra spawned task per
//! connection), which keeps the load generator's own CPU cost low: it shares the machine with the
//! server under test.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, HOST, HeaderMap};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Io = TokioIo<TcpStream>;
type Body = Full<Bytes>;

struct Live {
    sender: SendRequest<Body>,
    conn: Pin<Box<Connection<Io, Body>>>,
}

/// One keep-alive connection. After a transport error it is dropped and re-established lazily on
/// the next [`Conn::send`].
pub struct Conn {
    addr: SocketAddr,
    live: Option<Live>,
    /// How many times a new TCP connection was made (the first one included).
    pub connects: u64,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            live: None,
            connects: 0,
        }
    }

    /// Connects now (instead of on the first request), so that connection set-up is not timed.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let mut conn = Self::new(addr);
        conn.ensure_live().await?;
        Ok(conn)
    }

    async fn ensure_live(&mut self) -> Result<&mut Live> {
        if self.live.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect to {}", self.addr))?;
            stream.set_nodelay(true).context("set TCP_NODELAY")?;
            let (sender, conn) = http1::handshake::<_, Body>(TokioIo::new(stream))
                .await
                .context("HTTP/1 handshake")?;
            self.connects += 1;
            self.live = Some(Live {
                sender,
                conn: Box::pin(conn),
            });
        }
        self.live
            .as_mut()
            .ok_or_else(|| anyhow!("connection vanished"))
    }

    /// Drops the current TCP connection (e.g. after an abandoned request); the next send reconnects.
    pub fn reset(&mut self) {
        self.live = None;
    }

    /// Sends one request and reads the whole response body.
    pub async fn send(&mut self, req: Request<Body>) -> Result<(StatusCode, Bytes)> {
        let (status, _headers, body) = self.send_full(req).await?;
        Ok((status, body))
    }

    /// [`Conn::send`], also keeping the response headers (e.g. `Set-Cookie`).
    pub async fn send_full(
        &mut self,
        req: Request<Body>,
    ) -> Result<(StatusCode, HeaderMap, Bytes)> {
        let result = self.send_inner(req).await;
        if result.is_err() {
            // Never poll a failed or finished connection again; reconnect next time.
            self.live = None;
        }
        result
    }

    async fn send_inner(&mut self, req: Request<Body>) -> Result<(StatusCode, HeaderMap, Bytes)> {
        let live = self.ensure_live().await?;
        let Live { sender, conn } = live;
        drive(conn, sender.ready())
            .await?
            .context("connection not ready")?;
        let resp = drive(conn, sender.send_request(req))
            .await?
            .context("send request")?;
        let (parts, body) = resp.into_parts();
        let closing = parts
            .headers
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = drive(conn, body.collect())
            .await?
            .context("read response body")?
            .to_bytes();
        if closing {
            self.live = None;
        }
        Ok((parts.status, parts.headers, body))
    }
}

/// Runs `fut` while also polling the connection (which does the actual reading and writing).
async fn drive<F: Future>(conn: &mut Pin<Box<Connection<Io, Body>>>, fut: F) -> Result<F::Output> {
    tokio::pin!(fut);
    tokio::select! {
        biased;
        out = &mut fut => return Ok(out),
        res = conn.as_mut() => res.context("connection error")?,
    }
    // The connection finished cleanly (the peer closed it). What it had already read may still
    // complete `fut`; after that the caller drops the connection.
    match tokio::time::timeout(Duration::from_secs(1), fut).await {
        Ok(out) => Ok(out),
        Err(_) => bail!("connection closed by peer"),
    }
}

const X_API_KEY: &str = "x-api-key";

/// The credential a request carries.
#[derive(Clone, Copy)]
enum Cred<'a> {
    None,
    /// `Authorization: Bearer <token>` (an access token, or a key: the server accepts both there).
    Bearer(&'a str),
    /// `X-API-Key: <key>`.
    ApiKey(&'a str),
    /// `Cookie: <name>=<value>` (a browser session).
    Cookie(&'a str),
}

impl<'a> Cred<'a> {
    fn bearer(token: Option<&'a str>) -> Self {
        token.map_or(Self::None, Self::Bearer)
    }
}

/// Builds requests for one server address (fills in the `Host` header).
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    host: String,
}

impl Target {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.host)
    }

    pub fn get(&self, path: &str, bearer: Option<&str>) -> Result<Request<Body>> {
        self.build(Method::GET, path, Cred::bearer(bearer), None)
    }

    /// `GET` with these headers (an RFC 9421 signature, say) and no other credential.
    pub fn get_with_headers(&self, path: &str, headers: &HeaderMap) -> Result<Request<Body>> {
        let mut b = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(HOST, &self.host);
        for (name, value) in headers {
            b = b.header(name, value);
        }
        b.body(Full::new(Bytes::new()))
            .context("build signed request")
    }

    /// `GET` with `X-API-Key: <key>`.
    pub fn get_api_key(&self, path: &str, key: &str) -> Result<Request<Body>> {
        self.build(Method::GET, path, Cred::ApiKey(key), None)
    }

    /// `GET` with `Cookie: <cookie>`, where `cookie` is one `name=value` pair.
    pub fn get_cookie(&self, path: &str, cookie: &str) -> Result<Request<Body>> {
        self.build(Method::GET, path, Cred::Cookie(cookie), None)
    }

    /// `body` is already-serialized JSON (kept as `Bytes` so that reusing it is a cheap clone).
    pub fn post_json(
        &self,
        path: &str,
        body: Bytes,
        bearer: Option<&str>,
    ) -> Result<Request<Body>> {
        self.build(Method::POST, path, Cred::bearer(bearer), Some(body))
    }

    /// `POST` of JSON with `X-API-Key: <key>`.
    pub fn post_json_api_key(&self, path: &str, body: Bytes, key: &str) -> Result<Request<Body>> {
        self.build(Method::POST, path, Cred::ApiKey(key), Some(body))
    }

    /// `POST` of a form (`application/x-www-form-urlencoded`), with an `Authorization` value (HTTP
    /// Basic, say) and a `Cookie` pair when given.
    pub fn post_form(
        &self,
        path: &str,
        body: Bytes,
        authorization: Option<&str>,
        cookie: Option<&str>,
    ) -> Result<Request<Body>> {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(a) = authorization {
            b = b.header(AUTHORIZATION, a);
        }
        if let Some(c) = cookie {
            b = b.header(COOKIE, c);
        }
        b.body(Full::new(body)).context("build form request")
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        cred: Cred<'_>,
        json: Option<Bytes>,
    ) -> Result<Request<Body>> {
        let mut b = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, &self.host);
        match cred {
            Cred::None => {}
            Cred::Bearer(token) => b = b.header(AUTHORIZATION, format!("Bearer {token}")),
            Cred::ApiKey(key) => b = b.header(X_API_KEY, key),
            Cred::Cookie(pair) => b = b.header(COOKIE, pair),
        }
        let body = match json {
            Some(body) => {
                b = b.header(CONTENT_TYPE, "application/json");
                body
            }
            None => Bytes::new(),
        };
        b.body(Full::new(body))
            .with_context(|| format!("build {method} request"))
    }

    /// One request on a fresh connection (for seeding and health checks, not for timed loops).
    pub async fn once(&self, req: Request<Body>) -> Result<(StatusCode, Bytes)> {
        let (status, _headers, body) = self.once_full(req).await?;
        Ok((status, body))
    }

    /// [`Target::once`], also keeping the response headers.
    pub async fn once_full(&self, req: Request<Body>) -> Result<(StatusCode, HeaderMap, Bytes)> {
        let mut conn = Conn::new(self.addr);
        tokio::time::timeout(Duration::from_secs(30), conn.send_full(req))
            .await
            .map_err(|_| anyhow!("request timed out after 30 s"))?
    }
}

/// Renders a response body for an error message (truncated, lossy UTF-8).
pub fn body_snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        s.push('…');
    }
    s
}
