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

const server = http.createServer((req, res) => {
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
drain(server); // the grace: DRAIN_GRACE_MS, 5 s by default
