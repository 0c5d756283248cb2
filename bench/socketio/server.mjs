// Socket.IO 4 doing what `switchboard-bench` asks of every server: echo, broadcast to
// the others, rooms. WebSocket transport only, no compression, as the others.
import { createServer } from "node:http";
import { Server } from "socket.io";

const http = createServer();
const io = new Server(http, { transports: ["websocket"], perMessageDeflate: false, maxHttpBufferSize: 1 << 20 });
io.on("connection", (socket) => {
  socket.on("echo", (m) => socket.emit("echo", m));
  socket.on("rpc", (m, ack) => ack(m));
  socket.on("tick", (m) => socket.broadcast.emit("tick", m));
  socket.on("join", (room) => {
    socket.join(room);
    socket.emit("joined", room);
  });
  socket.on("room", (m) => socket.to(m.room).emit("tick", m));
  socket.on("publisher", () => {});
});
http.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
  console.log(`socketio listening on ws://127.0.0.1:${http.address().port}/`);
});
