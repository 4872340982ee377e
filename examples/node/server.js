// The Node.js cluster tutorial's server, made a zero-downtime baton worker.
//
//   baton serve --workers 2 -- node examples/node/server.js
//
// Two changes from the tutorial:
// - It does not bind a port: baton hands it the listening socket the systemd
//   way (descriptor 3, LISTEN_FDS, LISTEN_PID), and `listen({ fd: 3 })` takes it.
// - On SIGTERM (baton's drain signal) it drains without failing a request,
//   with baton-drain.js beside it: it stops accepting at once (the other
//   workers take the queue), answers every later request with
//   `Connection: close`, closes idle keep-alive connections only after a
//   grace period (a client about to reuse one is answered, not reset), and
//   exits when its last connection has closed.
//
// Besides `/`, it serves what `baton check --scenario stream` and
// `--scenario websocket` drive, as a real application would: `/stream`, a
// server-sent event stream (ended cleanly when the worker drains, so the
// client reconnects), `/download`, a chunked download that the drain lets
// finish, and `/ws`, a WebSocket echo with the `ws` package (`npm install
// ws`; without it `/ws` answers 501), closed with 1001 when the worker
// drains.
//
// WORK=N burns N iterations of a CPU loop per request, like the tutorial's
// server (500000 is about a millisecond here).
// CRASH_AFTER_MS=N reproduces the tutorial's crashes: the process exits with
// status 1 at a random moment between N/2 and N milliseconds after it starts.

'use strict';
const http = require('http');
const drain = require('./baton-drain');

const WORK = Number(process.env.WORK || 0);

function burnCpu(iterations) {
  let x = 0;
  for (let i = 0; i < iterations; i++) x += i % 7;
  return x;
}

if (Number(process.env.LISTEN_PID) !== process.pid || Number(process.env.LISTEN_FDS || 0) < 1) {
  console.error('no listening socket was passed: run me as `baton serve -- node server.js`');
  process.exit(2);
}

// Event streams open now, to end when the worker drains; once it drains,
// new ones end at once (a client may ask on a keep-alive connection).
const eventStreams = new Set();
let draining = false;

// GET /stream?seconds=N: an event every 100 ms for N seconds (60 by default).
function eventStream(req, res, query) {
  let left = Math.min(Number(query.get('seconds') || 60), 600) * 10;
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  if (draining) return res.end();
  let sent = 0;
  const timer = setInterval(() => {
    sent += 1;
    res.write(`id: ${sent}\ndata: ${sent}\n\n`);
    if (--left <= 0) end();
  }, 100);
  const end = () => {
    clearInterval(timer);
    eventStreams.delete(end);
    res.end();
  };
  eventStreams.add(end);
  res.on('close', () => { clearInterval(timer); eventStreams.delete(end); });
}

// GET /download?bytes=N&seconds=S: N bytes (4 MiB by default) in pieces
// every 100 ms over S seconds (5 by default), chunked.
function download(req, res, query) {
  let left = Math.min(Number(query.get('bytes') || 4 << 20), 256 << 20);
  const pieces = Math.max(1, Math.min(Number(query.get('seconds') || 5), 600) * 10);
  const piece = Math.max(1, Math.ceil(left / pieces));
  res.writeHead(200, { 'content-type': 'application/octet-stream' });
  const timer = setInterval(() => {
    const n = Math.min(piece, left);
    left -= n;
    res.write(Buffer.alloc(n, '.'));
    if (left <= 0) {
      clearInterval(timer);
      res.end();
    }
  }, 100);
  res.on('close', () => clearInterval(timer));
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (req.method === 'GET' && url.pathname === '/stream') return eventStream(req, res, url.searchParams);
  if (req.method === 'GET' && url.pathname === '/download') return download(req, res, url.searchParams);
  if (url.pathname === '/ws') {
    res.statusCode = 501;
    return res.end('WebSocket needs the ws package: npm install ws\n');
  }
  // Read any request body to its end before answering.
  let received = 0;
  req.on('data', (chunk) => { received += chunk.length; });
  req.on('end', () => {
    burnCpu(WORK);
    const body = req.method === 'POST'
      ? `Process handled by pid: ${process.pid}, received ${received} bytes`
      : `Process handled by pid: ${process.pid}`;
    res.end(body);
  });
});
// The tutorial's crashing workers: with CRASH_AFTER_MS, each worker dies
// between half that and that long after it starts serving (counted from
// then, so that a slow start on a busy host is not a crash before ready).
const crashAfter = Number(process.env.CRASH_AFTER_MS || 0);
server.listen({ fd: 3 }, () => {
  console.log(`worker ${process.pid} listening`);
  if (crashAfter > 0) {
    setTimeout(() => {
      console.error(`worker ${process.pid} crashing on purpose`);
      process.exit(1);
    }, crashAfter / 2 + Math.random() * crashAfter / 2);
  }
});
// WebSocket echo at /ws, if the ws package is installed.
let sockets = null;
try {
  const { WebSocketServer } = require('ws');
  sockets = new WebSocketServer({ server, path: '/ws' });
  sockets.on('connection', (ws) => {
    if (draining) return ws.close(1001, 'the server is restarting');
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
} catch (e) {
  if (e.code !== 'MODULE_NOT_FOUND') throw e;
}

// The grace: DRAIN_GRACE_MS, 5 s by default. When the drain starts, event
// streams end and WebSockets are sent a close frame: their clients
// reconnect, to the new workers.
drain(server, {
  onDrain() {
    draining = true;
    for (const end of eventStreams) end();
    if (sockets) for (const ws of sockets.clients) ws.close(1001, 'the server is restarting');
  },
});
