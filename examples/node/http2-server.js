// An HTTP/2 (h2c) server for baton: it serves the listener baton passes at
// descriptor 3, and drains on SIGTERM by closing each open session
// gracefully (GOAWAY, its open streams finish) as well as the server.
// server.close() alone leaves open sessions without GOAWAY: busy clients
// stay on the old worker until baton's --drain-timeout kills it, and lose
// the streams in flight then.
//
//   baton serve --workers 2 -- node examples/node/http2-server.js
const http2 = require('http2');
const sessions = new Set();
const server = http2.createServer((req, res) => {
  let n = 0;
  req.on('data', (c) => { n += c.length; });
  req.on('end', () => res.end(`Process handled by pid: ${process.pid}, received ${n} bytes`));
});
server.on('session', (s) => { sessions.add(s); s.on('close', () => sessions.delete(s)); });
server.listen({ fd: 3 });
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  for (const s of sessions) s.close();
});
