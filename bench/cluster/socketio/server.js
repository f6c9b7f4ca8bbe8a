// The Socket.IO side of bench/cluster.sh: one Socket.IO 4 node joined to the others through
// @socket.io/redis-adapter (node-redis clients), websocket transport only.
//
//   node server.js --port 9101 --redis redis://127.0.0.1:6390 [--room bench]
//
// A client connecting with ?role=sub joins the room; a "pub" event from any client is
// emitted to the room on every node (io.to(room).emit("m", data): local sockets directly,
// the other nodes through Redis). Loopback only. Prints "ready <port>" once it listens.
"use strict";

const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

const port = Number(arg("--port", "9101"));
const redisUrl = arg("--redis", "redis://127.0.0.1:6379");
const room = arg("--room", "bench");

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on("error", (e) => console.error("redis pub:", e.message));
  sub.on("error", (e) => console.error("redis sub:", e.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const server = http.createServer();
  const io = new Server(server, {
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
    adapter: createAdapter(pub, sub),
  });
  let subs = 0;
  let pubs = 0;
  io.on("connection", (socket) => {
    if (socket.handshake.query.role === "sub") {
      socket.join(room);
      subs++;
      socket.on("disconnect", () => subs--);
    }
    socket.on("pub", (data) => {
      pubs++;
      io.to(room).emit("m", data);
    });
  });
  process.on("SIGTERM", () => {
    console.error(`node ${port}: ${pubs} pub events received, ${subs} subscribers at exit`);
    process.exit(0);
  });
  server.listen(port, "127.0.0.1", () => console.log(`ready ${port}`));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
