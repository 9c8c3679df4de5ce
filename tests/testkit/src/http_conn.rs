//! A keep-alive HTTP/1 client connection from a chosen source address, on
//! hyper's client, every exchange bounded by [`TIMEOUT`].

use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::net::connect_from;
use crate::wait::TIMEOUT;

/// The header the gateway names the serving node in.
pub const NODE_HEADER: &str = "x-stickyio-node";

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    /// The gateway's [`NODE_HEADER`], if any.
    pub node: Option<String>,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    /// Reads a whole response: status, headers and body.
    pub async fn read<B>(res: Response<B>) -> Result<Reply, String>
    where
        B: hyper::body::Body,
        B::Error: std::fmt::Display,
    {
        let status = res.status();
        let headers = res.headers().clone();
        let node = headers
            .get(NODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Reply {
            status,
            node,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// The body as JSON; `Null` when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One keep-alive HTTP/1 client connection.
pub struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
}

impl HttpConn {
    pub async fn open(source: Ipv4Addr, target: SocketAddr) -> Result<Self, String> {
        let stream = connect_from(source, target)
            .await
            .map_err(|e| format!("connect {target}: {e}"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(HttpConn { sender })
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "gateway.test");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("connection: {e}"))?;
            let res = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("request {path}: {e}"))?;
            Reply::read(res).await
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{path}: timed out"))?
    }

    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        self.send(Method::GET, path, &[], "").await
    }
}

/// `GET path` on a fresh loopback connection to `addr`, e.g. an admin
/// listener; panics when there is no answer.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut conn = HttpConn::open(Ipv4Addr::LOCALHOST, addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    conn.get(path)
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}
