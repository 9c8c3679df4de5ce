//! A websocket client written from RFC 6455 on a raw stream: it upgrades,
//! connects the Socket.IO main namespace and subscribes, then may never read
//! again, as the hostile-client tests of the gateway and the node need.

/// A client-to-server websocket text frame (clients must mask).
fn masked_text_frame(text: &str) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let payload = text.as_bytes();
    assert!(payload.len() < 126);
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The websocket upgrade request of a hostile client.
const UPGRADE: &[u8] = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// Upgrades `stream` to a Socket.IO websocket, connects the main namespace
/// and subscribes to `topic`, waiting for each answer as socket.io-client
/// does (an event sent before the connect is acked ends the session). From
/// then on the caller need not read the stream at all.
pub async fn subscribe_over_websocket(stream: &mut tokio::net::TcpStream, topic: &str) {
    use tokio::io::AsyncWriteExt;
    let mut reader = FrameReader::default();
    let exchange = async {
        stream.write_all(UPGRADE).await.expect("send upgrade");
        reader.head(stream).await;
        reader.text_until(stream, |t| t.starts_with("0{")).await;
        stream.write_all(&masked_text_frame("40")).await.unwrap();
        reader.text_until(stream, |t| t.starts_with("40{")).await;
        let subscribe = format!("420[\"subscribe\",\"{topic}\"]");
        stream
            .write_all(&masked_text_frame(&subscribe))
            .await
            .unwrap();
        let ack = reader.text_until(stream, |t| t.starts_with("430")).await;
        assert!(ack.contains("\"ok\":true"), "subscribe refused: {ack}");
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .expect("websocket subscribe answered within 10 s");
}

/// Reads the server side of a websocket off a raw stream.
#[derive(Default)]
struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    async fn fill(&mut self, stream: &mut tokio::net::TcpStream) {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the server closed the websocket");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Consumes the `101` response head.
    async fn head(&mut self, stream: &mut tokio::net::TcpStream) {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
                self.buf.drain(..end + 4);
                return;
            }
            self.fill(stream).await;
        }
    }

    /// Skips text frames until one matches `wanted`; returns it.
    async fn text_until(
        &mut self,
        stream: &mut tokio::net::TcpStream,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        loop {
            while let Some(text) = self.frame() {
                if wanted(&text) {
                    return text;
                }
            }
            self.fill(stream).await;
        }
    }

    /// The next whole (unmasked, unfragmented) frame's payload, if buffered.
    fn frame(&mut self) -> Option<String> {
        let [_, len, ..] = self.buf[..] else {
            return None;
        };
        let (start, len) = match len & 0x7f {
            126 if self.buf.len() >= 4 => {
                (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize)
            }
            127 if self.buf.len() >= 10 => (
                10,
                u64::from_be_bytes(self.buf[2..10].try_into().ok()?) as usize,
            ),
            126 | 127 => return None,
            n => (2, n as usize),
        };
        if self.buf.len() < start + len {
            return None;
        }
        let frame: Vec<u8> = self.buf.drain(..start + len).skip(start).collect();
        Some(String::from_utf8_lossy(&frame).into_owned())
    }
}
