// socket.io peer for bench/run (engine.io v4 over a raw WebSocket; no polling).
//   "e" data            rpc: emitted back to the sender
//   "j" topic           join a room; answered with "ok"
//   "p" {topic, d}      publish: d goes to the room except the sender ("m")
//   "u" {to, d}         dm: d goes to room "u:<to>" and "u:<me>" except the
//                       sending socket ("m") — every tab of the recipient and
//                       the sender's other tabs
// The user comes from ?user= in the URL.
'use strict';
const { Server } = require('socket.io');

const port = Number(process.env.PORT || 8080);
const io = new Server(port, {
  transports: ['websocket'],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  maxHttpBufferSize: 1e6,
});

io.on('connection', (socket) => {
  const user = String(socket.handshake.query.user || 'anonymous');
  socket.join('u:' + user);
  socket.on('e', (d) => socket.emit('e', d));
  socket.on('j', (topic) => { socket.join(topic); socket.emit('ok'); });
  socket.on('p', (m) => socket.to(m.topic).emit('m', m.d));
  socket.on('u', (m) => socket.to('u:' + m.to).to('u:' + user).emit('m', m.d));
});
console.log(`socket.io peer listening on ${port}`);
