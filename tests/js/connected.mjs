// Waiting for a socket.io-client socket to connect, shared by the tests
// that open clients through a gateway: a connect_error fails at once with
// its message, and no answer fails after a bound, never a hang.

/** Resolves once `socket` connects; rejects on connect_error or after `ms`. */
export function connected(socket, label, ms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${label}: no connect within ${ms} ms`)), ms);
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve();
    });
    socket.once("connect_error", (e) => {
      clearTimeout(timer);
      reject(new Error(`${label}: connect_error: ${e.message}`));
    });
  });
}
