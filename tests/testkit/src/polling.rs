//! A Socket.IO client speaking Engine.IO v4 long-polling by hand, from a
//! chosen source address, so each request and the node that served it can
//! be checked. Written from the protocol, not from the gateway's
//! `engineio.rs`: a second opinion on its parser.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

use http::{Method, StatusCode};
use serde_json::Value;

use crate::http_conn::{HttpConn, Reply};

/// A Socket.IO client speaking Engine.IO v4 long-polling by hand, so each
/// request and the node that served it can be checked.
pub struct PollingSession {
    conn: HttpConn,
    pub sid: String,
    /// Every node that answered a request of this session.
    pub nodes: BTreeSet<String>,
    next_ack: u32,
}

/// Separates the packets of one polling payload.
pub const SEP: char = '\u{1e}';

impl PollingSession {
    /// Handshake and Socket.IO connect to the main namespace.
    pub async fn open(source: Ipv4Addr, target: SocketAddr) -> Result<Self, String> {
        let mut conn = HttpConn::open(source, target).await?;
        let reply = conn.get("/socket.io/?EIO=4&transport=polling").await?;
        let open = ok_body(&reply, "handshake")?;
        let json: Value = serde_json::from_str(open.strip_prefix('0').unwrap_or(&open))
            .map_err(|e| format!("open packet {open:?}: {e}"))?;
        let sid = json["sid"]
            .as_str()
            .ok_or(format!("no sid in {open:?}"))?
            .to_owned();
        let mut session = PollingSession {
            conn,
            sid,
            nodes: BTreeSet::new(),
            next_ack: 0,
        };
        session.nodes.extend(reply.node);
        session.post("40").await?;
        let packets = session
            .poll_until(|p| p.starts_with("40") || p.starts_with("44"))
            .await?;
        if !packets.iter().any(|p| p.starts_with("40{")) {
            return Err(format!("namespace connect refused: {packets:?}"));
        }
        Ok(session)
    }

    fn path(&self) -> String {
        format!("/socket.io/?EIO=4&transport=polling&sid={}", self.sid)
    }

    pub async fn post(&mut self, payload: &str) -> Result<(), String> {
        let path = self.path();
        let reply = self
            .conn
            .send(
                Method::POST,
                &path,
                &[("content-type", "text/plain;charset=UTF-8")],
                payload,
            )
            .await?;
        self.nodes.extend(reply.node.clone());
        let body = ok_body(&reply, "post")?;
        if body != "ok" {
            return Err(format!("post answered {body:?}"));
        }
        Ok(())
    }

    /// Long-polls until a packet satisfies `done`, answering pings.
    pub async fn poll_until(&mut self, done: impl Fn(&str) -> bool) -> Result<Vec<String>, String> {
        let mut seen = Vec::new();
        for _ in 0..20 {
            let path = self.path();
            let reply = self.conn.get(&path).await?;
            self.nodes.extend(reply.node.clone());
            let body = ok_body(&reply, "poll")?;
            let mut finished = false;
            for packet in body.split(SEP) {
                if packet == "2" {
                    self.post("3").await?;
                }
                if packet == "1" {
                    return Err("the node closed the session".into());
                }
                finished |= done(packet);
                seen.push(packet.to_owned());
            }
            if finished {
                return Ok(seen);
            }
        }
        Err(format!("no expected packet in 20 polls: {seen:?}"))
    }

    /// Emits `event` with `arg` and returns the ack's first argument.
    pub async fn emit_ack(&mut self, event: &str, arg: &Value) -> Result<Value, String> {
        let id = self.next_ack;
        self.next_ack += 1;
        self.post(&format!("42{id}{}", serde_json::json!([event, arg])))
            .await?;
        let prefix = format!("43{id}");
        let packets = self.poll_until(|p| p.starts_with(&prefix)).await?;
        let ack = packets
            .iter()
            .find(|p| p.starts_with(&prefix))
            .ok_or("ack vanished")?;
        let args: Value =
            serde_json::from_str(&ack[prefix.len()..]).map_err(|e| format!("ack {ack:?}: {e}"))?;
        Ok(args[0].clone())
    }

    /// Subscribes, publishes twice and checks both acks.
    pub async fn round_trips(&mut self, topic: &str) -> Result<(), String> {
        let ack = self.emit_ack("subscribe", &Value::from(topic)).await?;
        if ack["ok"] != true {
            return Err(format!("subscribe: {ack}"));
        }
        for n in 0..2 {
            let ack = self
                .emit_ack(
                    "publish",
                    &serde_json::json!({ "topic": topic, "content": n }),
                )
                .await?;
            if ack["ok"] != true {
                return Err(format!("publish: {ack}"));
            }
        }
        Ok(())
    }

    /// Sends the close packet.
    pub async fn close(mut self) -> Result<BTreeSet<String>, String> {
        self.post("1").await?;
        Ok(self.nodes)
    }
}

/// The body of a 200 response, or an error naming the status and body.
fn ok_body(reply: &Reply, what: &str) -> Result<String, String> {
    if reply.status != StatusCode::OK {
        return Err(format!("{what}: {} {}", reply.status, reply.body));
    }
    Ok(reply.body.clone())
}

/// A full polling session: handshake, connect, round trips, close.
pub async fn run_session(
    source: Ipv4Addr,
    target: SocketAddr,
    topic: &str,
) -> Result<BTreeSet<String>, String> {
    let mut session = PollingSession::open(source, target).await?;
    session.round_trips(topic).await?;
    session.close().await
}
