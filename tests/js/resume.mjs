// What an app needs to resume with the official socket.io-client, as the
// README shows it: keep the last cursor of each pattern (from messages, and
// from the subscribe ack), and subscribe with `since` on every (re)connect. Used by the tests; the demo page does the same.

/**
 * Subscribes `socket` to `patterns` now and again on every reconnect, from
 * the last cursor seen. `onMessage(m)` gets every message; `onAck(ack)`
 * every subscribe ack (`recovered: false` means messages were missed).
 */
export function resumingSubscriber(socket, patterns, { onMessage, onAck = () => {}, cursors = new Map() } = {}) {
  socket.on("message", (m) => {
    for (const p of m.patterns) if (m.cursor) cursors.set(p, m.cursor);
    onMessage(m);
  });
  const subscribe = () => {
    for (const pattern of patterns) {
      const since = cursors.get(pattern);
      socket.emit("subscribe", since ? { pattern, since } : pattern, (ack) => {
        // The position as the subscription began: where to resume from
        // when no message came before the next reconnect.
        if (ack.cursor) cursors.set(pattern, ack.cursor);
        onAck(ack);
      });
    }
  };
  socket.on("connect", subscribe);
  if (socket.connected) subscribe();
  return cursors;
}
