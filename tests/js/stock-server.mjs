// A stock Socket.IO app, as the Socket.IO tutorial has people write it:
// `socket.io` 4 on node:http, no adapter, no /healthz (every other path is
// a 404). Run as `node stock-server.mjs <name>`; prints `listening <port>`.
//
// Events: `whoami` acks this server's name; `join` puts the socket in a
// room; `to room` broadcasts to the room's other members; `chat message`
// goes to everyone on this server (the tutorial's chat).
import { createServer } from "node:http";
import { Server } from "socket.io";

const name = process.argv[2] ?? "stock";
const server = createServer((_req, res) => res.writeHead(404, { "content-type": "text/plain" }).end("not found\n"));
const io = new Server(server);
io.on("connection", (socket) => {
  socket.on("whoami", (ack) => ack(name));
  socket.on("join", (room, ack) => {
    socket.join(room);
    ack(name);
  });
  socket.on("to room", ({ room, text }) => socket.to(room).emit("room message", { text, from: name }));
  socket.on("chat message", (text) => io.emit("chat message", text));
});
server.listen(0, "127.0.0.1", () => console.log(`listening ${server.address().port}`));
process.on("SIGTERM", () => {
  io.close();
  server.close(() => process.exit(0));
});
