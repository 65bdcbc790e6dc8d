// node `ws` peer for bench/run. One JSON text message per frame:
//   {"op":"e",...}                  rpc: echoed back verbatim
//   {"op":"j","topic":T}            join topic T; answered {"op":"ok"}
//   {"op":"p","topic":T,"d":{...}}  publish: the raw frame goes to every
//                                   member of T except the sender
//   {"op":"u","to":U,"d":{...}}     dm: the raw frame goes to every socket of
//                                   user U and to the sender's other sockets
// The user comes from ?user= in the URL.
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.env.PORT || 8080);
const users = new Map(); // user -> Set<socket>
const topics = new Map(); // topic -> Set<socket>

const wss = new WebSocketServer({ port, host: '0.0.0.0', perMessageDeflate: false, clientTracking: false });

function sendRaw(set, data, except) {
  if (!set) return;
  for (const s of set) if (s !== except) s.send(data);
}

wss.on('connection', (ws, req) => {
  const q = req.url.indexOf('user=');
  const user = q >= 0 ? decodeURIComponent(req.url.slice(q + 5).split('&')[0]) : 'anonymous';
  let mine = users.get(user);
  if (!mine) users.set(user, (mine = new Set()));
  mine.add(ws);
  const joined = [];
  ws.on('message', (data, isBinary) => {
    const text = data.toString();
    let m;
    try { m = JSON.parse(text); } catch { return; }
    switch (m.op) {
      case 'e': ws.send(text); break;
      case 'j': {
        let set = topics.get(m.topic);
        if (!set) topics.set(m.topic, (set = new Set()));
        set.add(ws); joined.push(m.topic);
        ws.send('{"op":"ok"}');
        break;
      }
      case 'p': sendRaw(topics.get(m.topic), text, ws); break;
      case 'u':
        sendRaw(users.get(String(m.to)), text, null);
        if (String(m.to) !== user) sendRaw(mine, text, ws);
        break;
    }
  });
  ws.on('close', () => {
    mine.delete(ws);
    if (mine.size === 0) users.delete(user);
    for (const t of joined) { const set = topics.get(t); if (set) { set.delete(ws); if (set.size === 0) topics.delete(t); } }
  });
  ws.on('error', () => {});
});
wss.on('listening', () => console.log(`ws peer listening on ${port}`));
