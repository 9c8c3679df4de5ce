// Buffers a socket's `message` events so a test can await them in order.
export class Inbox {
  constructor(socket, waitMs) {
    this.waitMs = waitMs;
    this.items = [];
    this.waiters = [];
    socket.on("message", (m) => {
      const waiter = this.waiters.shift();
      if (waiter) waiter(m);
      else this.items.push(m);
    });
  }

  /** The next message, or a rejection after `waitMs`. */
  next() {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return new Promise((resolve, reject) => {
      const waiter = (m) => {
        clearTimeout(timer);
        resolve(m);
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`no message within ${this.waitMs} ms`));
      }, this.waitMs);
      this.waiters.push(waiter);
    });
  }
}
